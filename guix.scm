;;; binder-lite — reproducible notebooks on GNU Guix
;;;
;;;   guix build -f guix.scm        build binder-lite from this checkout
;;;   guix shell -D -f guix.scm     a development shell with its dependencies
;;;
;;; The package itself is defined in services/binder-lite/packages.scm, which is
;;; also what the channel (.guix-channel) and rendered systems use.

(add-to-load-path (string-append (dirname (current-filename)) "/services"))

(use-modules (guix packages)
             (gnu packages check)
             (gnu packages guile)
             (gnu packages python-web)
             (gnu packages python-xyz)
             (binder-lite packages))

(package
  (inherit binder-lite)
  ;; The dev shell also gets what the test suite runs with.
  (native-inputs
   (modify-inputs (package-native-inputs binder-lite)
     (append python-pytest python-hypothesis guile-3.0
             ;; the API's tests: notebooks made on the fly, checked against the
             ;; OpenAPI document
             python-nbformat python-openapi-core python-openapi-spec-validator))))
