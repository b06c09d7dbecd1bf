;; Run by tests/standin_guix.py as `guix repl -L SERVICES -- lower.scm SYSTEM OUT`:
;; the files Guix makes from `(binder-lite services)' for the operating-system in
;; SYSTEM (binder-lite's rendered system.scm), written into the directory OUT:
;;
;;   shepherd-binder-lite.scm  the binder-lite Shepherd service's file, as
;;                             `shepherd-service-file' in (gnu services shepherd)
;;                             has Guix make it for shepherd.conf;
;;   binder-lite.json          the file the service passes to `binder-lite serve';
;;   origin                    the store file names both would have on Guix System;
;;   module-import/, module-import-compiled/
;;                             the modules Guix imports for the service's file
;;                             (`%default-imported-modules' and what they use),
;;                             from this Guix's own installation.
;;
;; Nothing is built in the store (that needs substitutes or hours): both are
;; derivations whose builders only need Guile (and Guile-JSON, which `guix repl'
;; has), so each builder Guix lowered is run here with $out pointing into OUT.
(use-modules (gnu)
             (gnu services)
             (gnu services shepherd)
             (guix)
             (guix derivations)
             (guix modules)
             (guix build utils)
             (binder-lite services)
             (srfi srfi-1)
             (ice-9 match))

(define-values (system-file out)
  (match (command-line)
    ((_ system out) (values system out))))

(define os (load system-file))

(define shepherd-services
  (shepherd-configuration-services
   (service-value (fold-services (operating-system-services os)
                                 #:target-type shepherd-root-service-type))))

(define binder-lite-shepherd-service
  (or (find (lambda (s) (memq 'binder-lite (shepherd-service-provision s)))
            shepherd-services)
      (error "no Shepherd service provides binder-lite in" system-file)))

(define binder-lite-config
  (service-value (find (lambda (s) (eq? (service-kind s) binder-lite-service-type))
                       (operating-system-user-services os))))

(define (lowered object)
  ;; OBJECT's derivation, as `guix system' lowers it with --no-grafts.
  (parameterize ((%graft? #f))
    (with-store store
      (run-with-store store (lower-object object)))))

(define (run-builder derivation file)
  ;; What building DERIVATION would put in its output, written to FILE.
  (setenv "out" file)
  (save-module-excursion
   (lambda ()
     (primitive-load (last (derivation-builder-arguments derivation))))))

(define service-file
  (lowered ((@ (gnu services shepherd) shepherd-service-file)
            binder-lite-shepherd-service)))

(define config-file
  (lowered ((@@ (binder-lite services) binder-lite-config-file) binder-lite-config)))

(run-builder service-file (string-append out "/shepherd-binder-lite.scm"))
(run-builder config-file (string-append out "/binder-lite.json"))
(call-with-output-file (string-append out "/origin")
  (lambda (port)
    (format port "~a~%~a~%"
            (derivation->output-path service-file)
            (derivation->output-path config-file))))
;; What the service file's `module-import' and `module-import-compiled' store
;; items would hold: each module's source and compiled file.
(define (copy-into directory file)
  ;; FILE (relative, as in a load path), found in DIRECTORY's load path.
  (let ((target (string-append out "/" directory "/" file)))
    (mkdir-p (dirname target))
    (copy-file (search-path (if (string-suffix? ".go" file)
                                %load-compiled-path
                                %load-path)
                            file)
               target)))

(for-each (lambda (module)
            (let ((source (module-name->file-name module)))
              (copy-into "module-import" source)
              (copy-into "module-import-compiled"
                         (string-append (string-drop-right source 4) ".go"))))
          (source-module-closure
           (@@ (gnu services shepherd) %default-imported-modules)))
