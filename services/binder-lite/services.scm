;;; binder-lite — reproducible notebooks on GNU Guix
;;; The binder-lite system service: an account, its state directory and a
;;; Shepherd service running `binder-lite serve`.

(define-module (binder-lite services)
  #:use-module (gnu)
  #:use-module (gnu packages admin)
  #:use-module (gnu packages guile)
  #:use-module (gnu packages jupyter)
  #:use-module (gnu packages package-management)
  #:use-module (gnu packages parallel)
  #:use-module ((gnu services certbot)
                #:select (certbot-service-type certbot-configuration
                          certificate-configuration))
  #:use-module (gnu services configuration)
  #:use-module ((gnu services sysctl) #:select (sysctl-service-type))
  #:use-module ((gnu services web) #:select (nginx-location-configuration))
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
            binder-lite-service-type
            binder-lite-services))

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
   "How sessions run: in Guix containers, with the service's own Jupyter, or as Slurm jobs.")
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
   "Pages of other origins launch freely, or only with a signed build token.")
  (slurm-partition
   maybe-string
   "Slurm partition sessions are submitted to (none: the cluster's default).")
  (slurm-account
   maybe-string
   "Slurm account sessions are charged to.")
  (slurm-qos
   maybe-string
   "Slurm quality of service of the sessions' jobs.")
  (slurm-time-limit
   (integer 0)
   "Minutes a session's job may run (0: binder.max_age, in minutes rounded up).")
  (slurm-memory
   (integer 0)
   "Memory asked of Slurm per session (0: binder.session_limits.memory).")
  (slurm-cpus
   (integer 1)
   "CPUs asked of Slurm per session.")
  (slurm-gres
   maybe-string
   "Generic resources per session, as sbatch's --gres takes them (gpu:1).")
  (slurm-extra-args
   (list-of-strings '())
   "More sbatch options (--constraint=bigmem); never those binder-lite sets itself.")
  (slurm-node-runtime
   (symbol 'guix)
   "How a job runs its session: in Guix containers (the shared store) or local Jupyter.")
  (tls-port
   (integer 443)
   "TCP port of HTTPS, with TLS; binder.port then only redirects to binder.public_url.")
  (tls-certificate-file
   maybe-string
   "File on the machine holding the certificate chain (PEM), read when the service starts.")
  (tls-key-file
   maybe-string
   "File on the machine holding the certificate's private key (PEM, unencrypted).")
  (acme-email
   maybe-string
   "Guix System: the address Let's Encrypt writes to about the certificate.")
  (acme-domains
   (list-of-strings '())
   "Guix System: get and renew a certificate for these names with certbot (port 80)."))

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
    (cross-origin-launches "binder" "cross_origin_launches")
    (slurm-partition "binder" "slurm" "partition")
    (slurm-account "binder" "slurm" "account")
    (slurm-qos "binder" "slurm" "qos")
    (slurm-time-limit "binder" "slurm" "time_limit")
    (slurm-memory "binder" "slurm" "memory")
    (slurm-cpus "binder" "slurm" "cpus")
    (slurm-gres "binder" "slurm" "gres")
    (slurm-extra-args "binder" "slurm" "extra_args")
    (slurm-node-runtime "binder" "slurm" "node_runtime")
    (tls-port "binder" "tls" "port")
    (tls-certificate-file "binder" "tls" "certificate_file")
    (tls-key-file "binder" "tls" "key_file")))

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
    (match name
      ;; With acme, the copies of certbot's files (binder-lite-tls-files).
      ('tls-certificate-file (first (binder-lite-tls-files config)))
      ('tls-key-file (second (binder-lite-tls-files config)))
      (_
       (let ((field (find (lambda (f) (eq? (configuration-field-name f) name))
                          binder-lite-configuration-fields)))
         ((configuration-field-getter field) config)))))
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

;;; HTTPS.  `binder-lite serve' reads the certificate and key itself, as the
;;; service's account, when it starts and on `herd reload binder-lite' (SIGHUP).
;;; With acme, Guix's certbot service gets the certificate; it also runs nginx on
;;; port 80 for the ACME challenges (from certbot's webroot), which redirects
;;; every other request there to HTTPS.

(define (binder-lite-acme? config)
  (pair? (binder-lite-configuration-acme-domains config)))

(define (binder-lite-tls? config)
  (or (maybe-value-set? (binder-lite-configuration-tls-certificate-file config))
      (binder-lite-acme? config)))

(define (binder-lite-tls-files config)
  ;; The certificate and key the service reads: the site's, or with acme copies
  ;; of certbot's (which only root may read) in the state directory.
  (if (binder-lite-acme? config)
      (let ((directory (string-append
                        (binder-lite-configuration-state-directory config) "/tls")))
        (list (string-append directory "/fullchain.pem")
              (string-append directory "/privkey.pem")))
      (list (binder-lite-configuration-tls-certificate-file config)
            (binder-lite-configuration-tls-key-file config))))

(define (binder-lite-lowest-port config)
  (apply min (binder-lite-configuration-port config)
         (if (binder-lite-tls? config)
             (list (binder-lite-configuration-tls-port config))
             '())))

(define (binder-lite-sysctl config)
  ;; The service's account opens its ports itself: ports from the lowest it uses
  ;; up are opened to unprivileged processes (443 for HTTPS).
  (let ((lowest (binder-lite-lowest-port config)))
    (if (< lowest 1024)
        `(("net.ipv4.ip_unprivileged_port_start" . ,(number->string lowest)))
        '())))

(define (binder-lite-tls-requirement config)
  (append (if (< (binder-lite-lowest-port config) 1024) '(sysctl) '())
          (if (binder-lite-acme? config) '(binder-lite-certificate) '())))

(define binder-lite-reload-action
  (shepherd-action
   (name 'reload)
   (documentation "Read the TLS certificate and key again (SIGHUP); sessions go on.")
   (procedure #~(lambda (running)
                  (if running
                      (begin (kill (process-id running) SIGHUP) #t)
                      #f)))))

(define (binder-lite-certificate-installer config)
  ;; Copies certbot's certificate and key (/etc/certs/NAME, links into
  ;; /etc/letsencrypt/live/NAME once certbot has one, self-signed until then) for
  ;; the service's account, each written aside then renamed into place.
  (match-record config <binder-lite-configuration>
    (user state-directory acme-domains)
    (let ((source (string-append "/etc/certs/" (first acme-domains)))
          (target (string-append state-directory "/tls")))
      (program-file
       "binder-lite-install-certificate"
       #~(let* ((account (getpwnam #$user))
                (uid (passwd:uid account))
                (gid (passwd:gid account)))
           (define (install name)
             (let ((new (string-append #$target "/" name ".new")))
               (when (file-exists? new)
                 (delete-file new))
               (copy-file (string-append #$source "/" name) new)
               (chown new uid gid)
               (chmod new #o600)
               (rename-file new (string-append #$target "/" name))))
           (unless (file-exists? #$target)
             (mkdir #$target #o700))
           (chown #$target uid gid)
           (chmod #$target #o700)
           (install "fullchain.pem")
           (install "privkey.pem"))))))

(define (binder-lite-certificate-services config)
  (if (binder-lite-acme? config)
      (list (shepherd-service
             (provision '(binder-lite-certificate))
             (requirement '(user-processes))
             (one-shot? #t)
             (documentation "Give binder-lite its copy of certbot's certificate.")
             (start #~(lambda _
                        (zero? (system*
                                #$(binder-lite-certificate-installer config)))))))
      '()))

(define (binder-lite-deploy-hook config)
  ;; Run by certbot after each new certificate (after Guix's own hook).
  (program-file
   "binder-lite-deploy-hook"
   (with-imported-modules '((gnu services herd))
     #~(begin
         (use-modules (gnu services herd))
         (when (zero? (system* #$(binder-lite-certificate-installer config)))
           (with-shepherd-action 'binder-lite ('reload) result result))))))

(define (binder-lite-certbot config)
  (match-record config <binder-lite-configuration>
    (acme-email acme-domains tls-port)
    (service certbot-service-type
             (certbot-configuration
              (email (and (maybe-value-set? acme-email) acme-email))
              ;; nginx's answer on port 80 to all but the challenges.  The names
              ;; are checked domain names (site/checks.py), so nothing but a host
              ;; reaches nginx's configuration.
              (default-location
                (nginx-location-configuration
                 (uri "/")
                 (body (list (string-append
                              "return 301 https://" (first acme-domains)
                              (if (= tls-port 443)
                                  ""
                                  (string-append ":" (number->string tls-port)))
                              "$request_uri;")))))
              (certificates
               (list (certificate-configuration
                      (domains acme-domains)
                      (deploy-hook (binder-lite-deploy-hook config)))))))))

(define (binder-lite-shepherd-service config)
  (match-record config <binder-lite-configuration>
    (package user state-directory log-file port runtime)
    (cons
     (shepherd-service
      (provision '(binder-lite))
      (requirement (append '(user-processes loopback networking)
                           ;; The Guix runtime builds session environments
                           ;; through the daemon.
                           (if (eq? runtime 'guix) '(guix-daemon) '())
                           (binder-lite-tls-requirement config)))
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
                      "LC_ALL=C.UTF-8"
                      ;; The Slurm runtime's sbatch, squeue, scontrol and scancel
                      ;; read the cluster's configuration from here.
                      #$@(if (eq? runtime 'slurm)
                             '("SLURM_CONF=/etc/slurm/slurm.conf")
                             '()))))
      (stop #~(make-kill-destructor))
      (actions (list binder-lite-reload-action)))
     (binder-lite-certificate-services config))))

(define binder-lite-service-type
  (service-type
   (name 'binder-lite)
   (extensions
    (list (service-extension account-service-type binder-lite-accounts)
          (service-extension activation-service-type binder-lite-activation)
          (service-extension shepherd-root-service-type
                             binder-lite-shepherd-service)
          (service-extension sysctl-service-type binder-lite-sysctl)
          ;; `git' for users who log in, next to the service's own; the Slurm
          ;; client tools on the service's PATH for the Slurm runtime.
          (service-extension profile-service-type
                             (lambda (config)
                               (cons (binder-lite-configuration-package config)
                                     (if (eq? (binder-lite-configuration-runtime config)
                                              'slurm)
                                         (list slurm)
                                         '()))))))
   (default-value (binder-lite-configuration))
   (description
    "Run binder-lite, a small Binder: a web page where people enter a git
repository and get a Jupyter notebook running in a Guix container.")))

(define (binder-lite-services config)
  "The services of a binder-lite system configured by CONFIG: binder-lite and,
when it asks for ACME certificates, Guix's certbot service (with its nginx)."
  (cons (service binder-lite-service-type config)
        (if (binder-lite-acme? config)
            (list (binder-lite-certbot config))
            '())))
