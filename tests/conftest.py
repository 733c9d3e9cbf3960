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


@pytest.fixture(scope="session")
def vlue_world(tmp_path_factory: pytest.TempPathFactory):
    """A 40-image world at 64 px (24 train / 4 val / 6 test / 6 OOD), no videos or text suite; read-only,
    built once per session and shared by the downstream-task and benchmark tests."""
    from grainvl.data.world.generate import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("vlue_world") / "w"
    cfg = WorldConfig(images=40, videos=0, resolution=64, split_fractions=(24, 4, 6, 6), text_scenes=0, dialogues=0)
    generate_world(cfg, out)
    return out
