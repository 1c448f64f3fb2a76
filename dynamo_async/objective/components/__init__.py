"""One module per objective component; each registers itself (docs/design.md section 4.6)."""
