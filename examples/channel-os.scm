;; Using binder-lite as a Guix channel from a hand-written configuration.
;;
;; Add the channel to ~/.config/guix/channels.scm (or pass -L services/ from a
;; checkout), then e.g.: guix system image -t qcow2 examples/channel-os.scm
(use-modules (gnu)
             (binder-lite services))
(use-service-modules networking ssh)

(operating-system
  (host-name "notebooks")
  (bootloader (bootloader-configuration
                (bootloader grub-bootloader)
                (targets '("/dev/vda"))))
  (file-systems (cons (file-system
                        (device (file-system-label "root"))
                        (mount-point "/")
                        (type "ext4"))
                      %base-file-systems))
  (services (append (list (service dhcpcd-service-type)
                          (service openssh-service-type)
                          (service binder-lite-service-type
                                   (binder-lite-configuration
                                     (site-name "Our notebooks")
                                     (port 8888)
                                     (max-sessions 4))))
                    %base-services)))
