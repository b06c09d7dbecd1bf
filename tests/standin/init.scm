;; The stand-in image's Shepherd services: what binder-lite's Guix systems run, made
;; from Debian packages.  @SERVE@ is replaced by the binder-lite command line.
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

(define sshd
  (service '(ssh-daemon ssh sshd)
    #:requirement '(networking)
    #:start (make-forkexec-constructor '("/usr/sbin/sshd" "-D" "-e")
                                       #:log-file "/dev/ttyS0")
    #:stop (make-kill-destructor)
    #:respawn? #t))

(define binder-lite
  (service '(binder-lite)
    #:requirement '(networking)
    #:documentation "Run the binder-lite notebook service."
    #:start (make-forkexec-constructor
             '(@SERVE@)
             #:user "binder" #:group "binder"
             #:directory "/var/lib/binder-lite"
             #:log-file "/var/log/binder-lite.log"
             #:environment-variables
             '("HOME=/var/lib/binder-lite" "PATH=/opt/binder-lite/bin:/usr/bin:/bin"
               "LC_ALL=C.UTF-8"))
    #:stop (make-kill-destructor)
    #:respawn? #t
    #:respawn-delay 1))

(register-services (list networking sshd binder-lite))
(start-in-the-background '(networking ssh-daemon binder-lite))
