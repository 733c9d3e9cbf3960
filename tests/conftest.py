import os

# Nothing may download in tests: keep the Hugging Face libraries offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


import pytest


@pytest.fixture(scope="session")
def image_world(tmp_path_factory: pytest.TempPathFactory):
    """A 24-image world at 64 px (16 train / 3 val / 2 test / 3 OOD), no videos or text suite; read-only,
    shared by the compression tests (xvlm-tiny's resolution)."""
    from grainvl.data.world.generate import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("image_world") / "w"
    cfg = WorldConfig(images=24, videos=0, resolution=64, split_fractions=(16, 3, 2, 3), text_scenes=0, dialogues=0)
    generate_world(cfg, out)
    return out
