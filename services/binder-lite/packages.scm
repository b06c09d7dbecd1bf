;;; binder-lite — reproducible notebooks on GNU Guix
;;; The binder-lite package, built from this repository with Guix's own Python packages.

(define-module (binder-lite packages)
  #:use-module (guix packages)
  #:use-module (guix gexp)
  #:use-module (guix utils)
  #:use-module (guix build-system pyproject)
  #:use-module ((guix licenses) #:prefix license:)
  #:use-module (gnu packages containers)
  #:use-module (gnu packages jupyter)
  #:use-module (gnu packages python-build)
  #:use-module (gnu packages python-crypto)
  #:use-module (gnu packages python-web)
  #:use-module (gnu packages python-xyz)
  #:use-module (gnu packages version-control)
  #:use-module (gnu packages virtualization)
  #:export (binder-lite
            %binder-lite-source-directory))

;; The repository root: this file is services/binder-lite/packages.scm in a
;; checkout or channel, and data/services/binder-lite/packages.scm in an installed
;; wheel, whose data/ folder holds the same sources.
(define %binder-lite-source-directory
  (dirname (dirname (current-source-directory))))

(define (binder-lite-source-file? file stat)
  ;; Only what the Python build needs: no VCS data, caches, build output or images.
  ;; images/ holds both the image templates (kept) and the images `image build`
  ;; writes next to them (left out: an earlier ISO must not end up in the package).
  (and (not (member (basename file)
                    '(".git" ".venv" "build" "dist" "__pycache__" ".mypy_cache"
                      ".ruff_cache" ".pytest_cache" ".hypothesis" "out" "tests"
                      "benchmarks" "examples" "artifacts" "node_modules")))
       (or (not (string=? (basename (dirname file)) "images"))
           (eq? (stat:type stat) 'directory)
           (string-suffix? ".j2" file))))

(define-public binder-lite
  (package
    (name "binder-lite")
    (version "0.1.0")
    (source (local-file %binder-lite-source-directory "binder-lite-checkout"
                        #:recursive? #t
                        #:select? binder-lite-source-file?))
    (build-system pyproject-build-system)
    (arguments
     ;; The test suite drives a Guix daemon, QEMU and Jupyter; it runs in CI
     ;; (.ci/run), not inside the build container.
     (list #:tests? #f))
    (native-inputs (list python-hatchling))
    (propagated-inputs
     (list python-click
           python-jinja2
           python-pyyaml
           python-paramiko
           python-tornado-6
           python-jupyter-server
           python-h11
           python-pyjwt
           python-cryptography
           git-minimal
           ;; The local runtime's session sandbox and its outbound network.
           bubblewrap
           slirp4netns))
    (home-page "https://github.com/genenetwork/binder-lite")
    (synopsis "Reproducible notebooks on GNU Guix")
    (description
     "binder-lite runs Jupyter notebooks from git repositories in Guix
containers, serves them from a small Binder-compatible web service, and builds
branded Guix System images that run that service.")
    (license license:gpl3+)))
