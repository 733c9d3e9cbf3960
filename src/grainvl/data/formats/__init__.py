"""Readers and writers, one module per official dataset format. Importing this package registers
every format with ``registry.FORMATS`` (used by ``grainvl data check``)."""

from grainvl.data.formats import (  # noqa: F401  (imported for registration)
    albef,
    coco_caption,
    convai2,
    dailydialog,
    dialogue_nli,
    glue,
    iglue,
    msrvtt,
    squad,
    vlue,
    vqa_v2,
    webdataset,
    xvlm_pretrain,
)
