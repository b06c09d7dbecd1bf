;; The stand-in image's shepherd.conf.  binder-lite's service is the one Guix
;; generates from (binder-lite services), loaded from /etc/shepherd/binder-lite.scm
;; (tests/standin_guix.py); networking and sshd, Guix's own services, are written
;; here for Debian's commands.
(use-modules (shepherd service))

(define networking
  (service '(networking loopback)
    #:documentation "QEMU user networking, configured as Guix's %qemu-static-networking."
    #:one-shot? #t
    #:start (lambda _
              (for-each (lambda (command) (apply system* command))
                        '(("ip" "link" "set" "lo" "up")
                          ("ip" "link" "set" "eth0" "up")
                          ("ip" "address" "add" "10.0.2.15/24" "dev" "eth0")
                          ("ip" "route" "add" "default" "via" "10.0.2.2")))
              (call-with-output-file "/etc/resolv.conf"
                (lambda (port) (display "nameserver 10.0.2.3\n" port)))
              #t)))

;; Shim: Guix's user-processes service only stops every remaining process at
;; shutdown; binder-lite's service requires it, and needs nothing else from it.
(define user-processes
  (service '(user-processes)
    #:documentation "Stand-in for Guix's user-processes (what services require)."
    #:one-shot? #t
    #:start (const #t)))

(define sshd
  (service '(ssh-daemon ssh sshd)
    #:requirement '(networking)
    #:start (make-forkexec-constructor '("/usr/sbin/sshd" "-D" "-e")
                                       #:log-file "/dev/ttyS0")
    #:stop (make-kill-destructor)
    #:respawn? #t))

(define (load-service file)
  ;; As Guix's shepherd.conf loads each service's file: in a fresh module that
  ;; uses (shepherd service); the file's value is the service.
  (save-module-excursion
   (lambda ()
     (let ((module (make-fresh-user-module)))
       (module-use! module (resolve-interface '(shepherd service)))
       (set-current-module module)
       (primitive-load file)))))

(register-services
 (list networking user-processes sshd (load-service "/etc/shepherd/binder-lite.scm")))
(start-in-the-background '(networking user-processes ssh-daemon binder-lite))
