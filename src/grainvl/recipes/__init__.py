"""End-to-end jobs, one module each (pretrain, pretrain_text, finetune, compress, bench, transfer, demo),
on the shared run scaffold; the CLI parses arguments and calls one of them (docs/architecture.md)."""
