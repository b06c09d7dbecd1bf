;;; binder-lite — reproducible notebooks on GNU Guix
;;; The binder-lite system service: an account, its state directory and a
;;; Shepherd service running `binder-lite serve`.

(define-module (binder-lite services)
  #:use-module (gnu)
  #:use-module (gnu packages admin)
  #:use-module (gnu packages jupyter)
  #:use-module (gnu packages package-management)
  #:use-module (gnu services shepherd)
  #:use-module (guix gexp)
  #:use-module (guix modules)
  #:use-module (guix profiles)
  #:use-module (guix records)
  #:use-module (binder-lite packages)
  #:use-module (guix packages)
  #:use-module (ice-9 match)
  #:use-module (srfi srfi-1)
  #:export (binder-lite-configuration
            binder-lite-configuration?
            binder-lite-configuration-port
            binder-lite-configuration-user
            binder-lite-configuration-state-directory
            binder-lite-configuration-log-file
            binder-lite-service-type))

(define-record-type* <binder-lite-configuration>
  binder-lite-configuration make-binder-lite-configuration
  binder-lite-configuration?
  (package          binder-lite-configuration-package          ;file-like
                    (default binder-lite))
  (site-name        binder-lite-configuration-site-name        ;string
                    (default "binder-lite"))
  (slug             binder-lite-configuration-slug             ;string
                    (default "binder-lite"))
  (tagline          binder-lite-configuration-tagline          ;string
                    (default "Reproducible notebooks on GNU Guix"))
  (logo             binder-lite-configuration-logo             ;file-like | #f
                    (default #f))
  (primary-color    binder-lite-configuration-primary-color    ;string
                    (default "#0b6e4f"))
  (port             binder-lite-configuration-port             ;integer
                    (default 8080))
  (max-sessions     binder-lite-configuration-max-sessions     ;integer
                    (default 8))
  (max-sessions-per-user binder-lite-configuration-max-sessions-per-user
                    (default 2))
  (idle-timeout     binder-lite-configuration-idle-timeout     ;seconds
                    (default 3600))
  (max-age          binder-lite-configuration-max-age          ;seconds
                    (default 21600))
  (allowed-repos    binder-lite-configuration-allowed-repos    ;list of strings
                    (default '("https://*")))
  ;; Packages kept in the store, with Jupyter and the Guix kernel, so that
  ;; sessions needing them start without building anything.
  (preload          binder-lite-configuration-preload          ;list of file-like
                    (default '()))
  (runtime          binder-lite-configuration-runtime          ;'guix | 'local
                    (default 'guix))
  (user             binder-lite-configuration-user             ;string
                    (default "binder"))
  (state-directory  binder-lite-configuration-state-directory  ;string
                    (default "/var/lib/binder-lite"))
  (log-file         binder-lite-configuration-log-file         ;string
                    (default "/var/log/binder-lite.log"))
  (auth-provider    binder-lite-configuration-auth-provider    ;'none | 'github | 'gitlab | 'oidc
                    (default 'none))
  (auth-issuer      binder-lite-configuration-auth-issuer      ;string | #f
                    (default #f))
  (auth-client-id   binder-lite-configuration-auth-client-id   ;string | #f
                    (default #f))
  ;; A file name on the target, read by `binder-lite serve' when it starts: the
  ;; secret itself never enters the store.
  (auth-client-secret-file binder-lite-configuration-auth-client-secret-file
                    (default #f))
  ;; "user:token" in a file on the target, for pushing sessions' changes
  ;; when a login provides no token of its own.
  (push-credential-file binder-lite-configuration-push-credential-file
                    (default #f))
  ;; Where people reach the service; OAuth redirects are built from it.
  (public-url       binder-lite-configuration-public-url       ;string | #f
                    (default #f))
  ;; Proxies in front whose X-Forwarded-* headers are believed.
  (trusted-proxies  binder-lite-configuration-trusted-proxies  ;list of strings
                    (default '()))
  (session-network  binder-lite-configuration-session-network  ;'none | 'outbound
                    (default 'outbound))
  ;; Per-session limits, enforced by the session sandbox.
  (session-memory   binder-lite-configuration-session-memory   ;bytes
                    (default (* 2 1024 1024 1024)))
  (session-processes binder-lite-configuration-session-processes ;integer
                    (default 256))
  (session-disk     binder-lite-configuration-session-disk     ;bytes
                    (default (* 2 1024 1024 1024)))
  (max-repo-size    binder-lite-configuration-max-repo-size    ;bytes
                    (default (* 512 1024 1024)))
  (session-domain   binder-lite-configuration-session-domain   ;string | #f
                    (default #f)))

(define (binder-lite-accounts config)
  (let ((user (binder-lite-configuration-user config)))
    (list (user-group (name user) (system? #t))
          (user-account
           (name user)
           (group user)
           (system? #t)
           (comment "binder-lite notebook service")
           (home-directory (binder-lite-configuration-state-directory config))
           (create-home-directory? #f)
           (shell (file-append shadow "/sbin/nologin"))))))

(define (binder-lite-activation config)
  ;; System accounts get no home directory, so the state directory is made here,
  ;; at boot and on reconfigure.
  (let ((user (binder-lite-configuration-user config))
        (state (binder-lite-configuration-state-directory config)))
    (with-imported-modules (source-module-closure '((gnu build activation)))
      #~(begin
          (use-modules (gnu build activation))
          (let ((account (getpwnam #$user)))
            ;; Sessions' tokens, the cookie secret and checkouts: the service only.
            (mkdir-p/perms #$state account #o700)
            (mkdir-p/perms (string-append #$state "/sessions") account #o700))))))

(define (json-string str)
  ;; A JSON string literal; the file below is read as YAML, which accepts JSON.
  (define (escape char)
    (let ((code (char->integer char)))
      (cond ((char=? char #\") "\\\"")
            ((char=? char #\\) "\\\\")
            ((< code 32) (format #f "\\u~4,'0x" code))
            (else (string char)))))
  (string-append "\"" (string-concatenate (map escape (string->list str))) "\""))

(define (json-value value)
  (cond ((string? value) (json-string value))
        ((symbol? value) (json-string (symbol->string value)))
        ((number? value) (number->string value))
        ((eq? value #t) "true")
        ((not value) "null")
        ((list? value) (string-append "[" (string-join (map json-value value) ", ") "]"))))

(define (binder-lite-kernel-profile config)
  ;; Jupyter and the Guix kernel, ready in the store for the first session.
  (profile
   (name "binder-lite-jupyter")
   (content (packages->manifest (list jupyter python-ipykernel guix-jupyter)))))

(define (binder-lite-preload config)
  ;; The preloaded packages only have to be in the store, not in one profile
  ;; (their propagated inputs may well conflict), so a directory of links to
  ;; each keeps them alive and in the image.
  (file-union
   "binder-lite-preload"
   (map (lambda (index item)
          (match item
            ((package output)
             (list (format #f "~2,'0d-~a-~a" index (package-name package) output)
                   (gexp-input package output)))
            (package
             (list (format #f "~2,'0d-~a" index (package-name package)) package))))
        (iota (length (binder-lite-configuration-preload config)))
        (binder-lite-configuration-preload config))))

(define (binder-lite-config-pieces config)
  ;; The service's own settings, in the shape of a site file's `site:' and
  ;; `binder:' sections, as JSON (which YAML reads) that `binder-lite serve'
  ;; loads like a site file.  A list of strings and file-like objects, which
  ;; become their store file names.
  (match-record config <binder-lite-configuration>
    (site-name slug tagline logo primary-color port max-sessions
     max-sessions-per-user idle-timeout max-age allowed-repos runtime user
     state-directory auth-provider auth-issuer auth-client-id
     auth-client-secret-file push-credential-file public-url trusted-proxies
     session-network session-memory session-processes session-disk max-repo-size
     session-domain)
    (define (field name value)
      (string-append (json-string name) ": " (json-value value)))
    (define (object . fields)
      (string-append "{" (string-join fields ", ") "}"))
    (list
     "{\"version\": 1, \"site\": {"
     (string-join (list (field "name" site-name) (field "slug" slug)
                        (field "tagline" tagline)
                        (field "primary_color" primary-color))
                  ", ")
     ;; The logo, a file-like object, is spliced in as its own piece.
     (if logo ", \"logo_path\": \"" "")
     (or logo "")
     (if logo "\"" "")
     "}, \"binder\": "
     (object (field "port" port) (field "max_sessions" max-sessions)
             (field "max_sessions_per_user" max-sessions-per-user)
             (field "idle_timeout" idle-timeout) (field "max_age" max-age)
             (field "allowed_repos" allowed-repos) (field "runtime" runtime)
             (field "user" user) (field "state_dir" state-directory)
             (field "push_credential_file" push-credential-file)
             (field "public_url" public-url)
             (field "trusted_proxies" trusted-proxies)
             (field "session_network" session-network)
             (string-append
              "\"session_limits\": "
              (object (field "memory" session-memory)
                      (field "processes" session-processes)
                      (field "disk" session-disk)))
             (field "max_repo_size" max-repo-size)
             (field "session_domain" session-domain)
             (string-append
              "\"auth\": "
              (object (field "provider" auth-provider)
                      (field "issuer" auth-issuer)
                      (field "client_id" auth-client-id)
                      (field "client_secret_file" auth-client-secret-file))))
     ", \"jupyter_profile\": \"" (binder-lite-kernel-profile config) "\""
     ", \"preload\": \"" (binder-lite-preload config) "\"}\n")))

(define (binder-lite-config-file config)
  (apply mixed-text-file "binder-lite.json" (binder-lite-config-pieces config)))

(define (binder-lite-shepherd-service config)
  (match-record config <binder-lite-configuration>
    (package user state-directory log-file port runtime)
    (list
     (shepherd-service
      (provision '(binder-lite))
      (requirement (append '(user-processes loopback networking)
                           ;; The Guix runtime builds session environments
                           ;; through the daemon.
                           (if (eq? runtime 'guix) '(guix-daemon) '())))
      (documentation "Run the binder-lite notebook service.")
      (respawn? #t)
      (respawn-delay 1)
      (start #~(make-forkexec-constructor
                (list #$(file-append package "/bin/binder-lite")
                      "serve" #$(binder-lite-config-file config)
                      "--port" #$(number->string port)
                      "--state-dir" #$state-directory
                      "--runtime" #$(symbol->string runtime))
                #:user #$user
                #:group #$user
                #:directory #$state-directory
                ;; Shepherd 1.0 rotates the log files of its services.
                #:log-file #$log-file
                #:environment-variables
                (list #$(string-append "HOME=" state-directory)
                      "PATH=/run/current-system/profile/bin"
                      "SSL_CERT_DIR=/etc/ssl/certs"
                      "GIT_SSL_CAINFO=/etc/ssl/certs/ca-certificates.crt"
                      "GUIX_LOCPATH=/run/current-system/locale"
                      "LC_ALL=C.UTF-8")))
      (stop #~(make-kill-destructor))))))

(define binder-lite-service-type
  (service-type
   (name 'binder-lite)
   (extensions
    (list (service-extension account-service-type binder-lite-accounts)
          (service-extension activation-service-type binder-lite-activation)
          (service-extension shepherd-root-service-type
                             binder-lite-shepherd-service)
          ;; `git' for users who log in, next to the service's own.
          (service-extension profile-service-type
                             (compose list binder-lite-configuration-package))))
   (default-value (binder-lite-configuration))
   (description
    "Run binder-lite, a small Binder: a web page where people enter a git
repository and get a Jupyter notebook running in a Guix container.")))
