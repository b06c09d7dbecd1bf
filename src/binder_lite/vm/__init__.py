"""Stage 4: booting images in QEMU and reaching them over SSH."""
