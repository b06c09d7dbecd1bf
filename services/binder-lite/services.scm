;;; binder-lite — reproducible notebooks on GNU Guix
;;; The binder-lite system service: an account, its state directory and a
;;; Shepherd service running `binder-lite serve`.

(define-module (binder-lite services)
  #:use-module (gnu)
  #:use-module (gnu packages admin)
  #:use-module (gnu packages guile)
  #:use-module (gnu packages jupyter)
  #:use-module (gnu packages package-management)
  #:use-module (gnu services configuration)
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
            binder-lite-configuration-fields
            binder-lite-configuration-port
            binder-lite-configuration-user
            binder-lite-configuration-state-directory
            binder-lite-configuration-log-file
            binder-lite-service-json
            binder-lite-service-type))

;; The fields, their defaults and documentation are those of the settings table,
;; src/binder_lite/site/settings.py; tests/test_settings.py checks that they agree.
;; Secrets never enter the store: the fields name files on the machine, read by
;; `binder-lite serve' when it starts.

(define-maybe/no-serialization string)
(define-maybe/no-serialization file-like)

(define (list-of-package-outputs? value)
  ;; What `specifications->packages' returns: packages, or (package output) lists.
  (and (list? value)
       (every (match-lambda
                ((? package?) #t)
                (((? package?) (? string?)) #t)
                (_ #f))
              value)))

(define-configuration/no-serialization binder-lite-configuration
  (site-name
   (string "binder-lite")
   "The site's name: the web page's title, GRUB's menu entry and /etc/issue.")
  (slug
   (string "binder-lite")
   "Short name, [a-z0-9-]{1,32}: image file names and the ISO label.")
  (tagline
   (string "")
   "Shown under the name on the web page.")
  (logo
   maybe-file-like
   "Image shown on the landing page; a file next to the site file.")
  (primary-color
   (string "#0b6e4f")
   "CSS hex colour of the page.")
  (package
   (file-like binder-lite)
   "The binder-lite package that runs the service.")
  (port
   (integer 8080)
   "TCP port the web service listens on.")
  (max-sessions
   (integer 8)
   "Sessions running at once, for everybody.")
  (max-sessions-per-user
   (integer 2)
   "Sessions one person may run at once.")
  (idle-timeout
   (integer 3600)
   "Seconds without activity before a session is stopped.")
  (max-age
   (integer (* 6 3600))
   "Seconds a session may live at all.")
  (allowed-repos
   (list-of-strings '("https://*" "git://*"))
   "URL patterns of the repositories people may launch; * is a wildcard.")
  (preload
   (list-of-package-outputs '())
   "Guix packages kept in the store so that sessions needing them start at once.")
  (runtime
   (symbol 'guix)
   "How sessions run: in Guix containers, or with the service's own Jupyter.")
  (user
   (string "binder")
   "System account the service runs as.")
  (state-directory
   (string "/var/lib/binder-lite")
   "Directory of the service's database, secrets and sessions.")
  (log-file
   (string "/var/log/binder-lite.log")
   "The service's log file (the Shepherd rotates it).")
  (push-credential-file
   maybe-string
   "File on the machine holding \"user:token\", to push when a login gives no token.")
  (api-token-file
   maybe-string
   "File on the machine holding the API's admin token, for a trusted service.")
  (auth-provider
   (symbol 'none)
   "Who logs people in: nobody (anonymous visitors), GitHub, GitLab or OIDC.")
  (auth-issuer
   maybe-string
   "The login provider's URL (required for OIDC).")
  (auth-client-id
   maybe-string
   "OAuth client ID registered with the provider.")
  (auth-client-secret-file
   maybe-string
   "File on the machine holding the OAuth client secret, read when the service starts.")
  (public-url
   maybe-string
   "Where people reach the service; OAuth redirects are built from it.")
  (trusted-proxies
   (list-of-strings '())
   "Proxies in front (IPs or CIDRs) whose X-Forwarded-* headers are believed.")
  (session-network
   (symbol 'outbound)
   "What sessions may reach: the internet (never this machine's networks) or nothing.")
  (session-memory
   (integer (* 2 1024 1024 1024))
   "Memory one session may use, all its processes together.")
  (session-processes
   (integer 256)
   "Tasks (processes and threads) one session may run at once.")
  (session-disk
   (integer (* 2 1024 1024 1024))
   "Disk one session's files may take (its checkout and /tmp).")
  (max-repo-size
   (integer (* 512 1024 1024))
   "Disk a repository may take in the cache.")
  (session-domain
   maybe-string
   "Serve each session from ID.DOMAIN, an origin of its own, instead of /s/ID/.")
  (cors-allowed-origins
   (list-of-strings '())
   "Origins (https://docs.example.org) whose pages may launch and use sessions.")
  (cross-origin-launches
   (symbol 'open)
   "Pages of other origins launch freely, or only with a signed build token."))

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

(define %service-json-keys
  ;; Where each field goes in the file `binder-lite serve' reads, which has the
  ;; shape of a site file's `site' and `binder' sections.  The package, the log
  ;; file and the preloaded packages (store items, not names) are not settings of
  ;; the running service.
  '((site-name "site" "name")
    (slug "site" "slug")
    (tagline "site" "tagline")
    (logo "site" "logo_path")
    (primary-color "site" "primary_color")
    (port "binder" "port")
    (max-sessions "binder" "max_sessions")
    (max-sessions-per-user "binder" "max_sessions_per_user")
    (idle-timeout "binder" "idle_timeout")
    (max-age "binder" "max_age")
    (allowed-repos "binder" "allowed_repos")
    (runtime "binder" "runtime")
    (user "binder" "user")
    (state-directory "binder" "state_dir")
    (push-credential-file "binder" "push_credential_file")
    (api-token-file "binder" "api_token_file")
    (auth-provider "binder" "auth" "provider")
    (auth-issuer "binder" "auth" "issuer")
    (auth-client-id "binder" "auth" "client_id")
    (auth-client-secret-file "binder" "auth" "client_secret_file")
    (public-url "binder" "public_url")
    (trusted-proxies "binder" "trusted_proxies")
    (session-network "binder" "session_network")
    (session-memory "binder" "session_limits" "memory")
    (session-processes "binder" "session_limits" "processes")
    (session-disk "binder" "session_limits" "disk")
    (max-repo-size "binder" "max_repo_size")
    (session-domain "binder" "session_domain")
    (cors-allowed-origins "binder" "cors_allowed_origins")
    (cross-origin-launches "binder" "cross_origin_launches")))

(define (json-field-value value)
  ;; Guile-JSON's native form: a vector is an array, 'null is null (an unset
  ;; maybe- field); symbols become strings.
  (cond ((not (maybe-value-set? value)) 'null)
        ((list? value) (list->vector value))
        (else value)))

(define (json-insert tree path value)
  ;; TREE, an alist of JSON objects, with VALUE at PATH (a list of keys).
  (match path
    ((key) (append tree (list (cons key value))))
    ((key rest ...)
     (let ((inner (or (assoc-ref tree key) '())))
       (append (alist-delete key tree)
               (list (cons key (json-insert inner rest value))))))))

(define (binder-lite-service-json config)
  "The settings `binder-lite serve' reads, as Guile-JSON's native value: an alist
of objects in which file-like objects (the logo, the profiles) stand for their
store file names."
  (define (field-value name)
    (let ((field (find (lambda (f) (eq? (configuration-field-name f) name))
                       binder-lite-configuration-fields)))
      ((configuration-field-getter field) config)))
  (fold (match-lambda*
          (((name . path) tree)
           (json-insert tree path (json-field-value (field-value name)))))
        `(("version" . 1)
          ;; Store items the file keeps alive, so that they are in the image:
          ;; Jupyter and the Guix kernel, and the preloaded packages.
          ("keep_in_store" . #(,(binder-lite-kernel-profile config)
                               ,(binder-lite-preload config))))
        %service-json-keys))

(define (json-gexp value)
  ;; A gexp evaluating to VALUE in which each file-like object is its file name.
  (cond ((file-like? value) #~#$value)
        ((vector? value) #~(vector #$@(map json-gexp (vector->list value))))
        ((symbol? value) #~'#$value)
        ((pair? value)
         #~(list #$@(map (match-lambda
                           ((key . item) #~(cons #$key #$(json-gexp item))))
                         value)))
        (else value)))

(define (binder-lite-config-file config)
  (computed-file
   "binder-lite.json"
   (with-extensions (list guile-json-4)
     #~(begin
         (use-modules (json))
         (call-with-output-file #$output
           (lambda (port)
             ;; #:unicode escapes control characters and those beyond U+00FF;
             ;; the rest of Latin-1 is written in UTF-8.
             (set-port-encoding! port "UTF-8")
             (scm->json #$(json-gexp (binder-lite-service-json config)) port
                        #:unicode #t #:pretty #t)))))))

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
