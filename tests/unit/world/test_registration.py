"""The library without the world, and what the world registers with it: the library's modules
load without importing the world, a config with the world's sections is refused until the world
is imported, and importing it adds the config sections, the `prep synthetic` source and the
eval item source."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_importing_the_world_registers_it_without_its_heavy_modules():
    out = _python("""
        import sys
        import frozen_scale.world
        heavy = [m for m in ("torch", "transformers", "PIL", "numpy", "ray", "frozen_scale.world.items") if m in sys.modules]
        print("heavy:", heavy)
    """)
    assert out.returncode == 0, out.stderr
    assert "heavy: []" in out.stdout


def test_the_library_loads_without_the_world_and_refuses_its_sections_until_it_is_imported():
    out = _python("""
        import sys
        import data_prep.cli, data_prep.pipeline, launchers.cli, frozen_scale.eval.cli, frozen_scale.train.trainer
        assert not [m for m in sys.modules if m.startswith("frozen_scale.world")], "the library imported the world"
        from frozen_scale.config import ConfigError, load_config
        try:
            load_config("configs/tiny-cpu.yaml")
        except ConfigError as err:
            print("refused:", err)
        import frozen_scale.world
        cfg = load_config("configs/tiny-cpu.yaml", ["world.seed=7"])
        print("loaded:", cfg.world.seed, cfg.lm_pretrain.arch)
    """)
    assert out.returncode == 0, out.stderr
    assert "refused: unknown config key 'world'" in out.stdout
    assert "loaded: 7 gpt2" in out.stdout


def test_registered_sections_read_check_and_write_like_the_librarys_own():
    from frozen_scale.config import ConfigError, dump_config, load_config, registered_sections
    from frozen_scale.world.config import LMPretrainConfig, WorldConfig

    assert registered_sections() == {"world": WorldConfig, "lm_pretrain": LMPretrainConfig}
    cfg = load_config(None, ["lm_pretrain.steps=7"])
    assert cfg.world == WorldConfig() and cfg.lm_pretrain.steps == 7  # defaults when the file has none
    text = dump_config(cfg)
    assert "\nworld:\n" in text and "extensions" not in text
    path = Path(__file__).parent / "_roundtrip.yaml"
    try:
        path.write_text(text)
        assert load_config(path) == cfg
    finally:
        path.unlink()
    with pytest.raises(ConfigError, match="unknown config key 'lm_pretrain.stpes'; did you mean 'steps'"):
        load_config(None, ["lm_pretrain.stpes=3"])
    with pytest.raises(ConfigError, match="unknown config key 'wrld'; did you mean 'world'"):
        load_config(None, ["wrld.seed=1"])
    with pytest.raises(ConfigError, match="naming_fraction"):  # the section checks itself
        load_config(None, ["lm_pretrain.naming_fraction=1.5"])
    with pytest.raises(AttributeError, match="no section 'nothing'"):
        cfg.nothing  # noqa: B018


def test_a_taken_section_name_is_refused():
    from dataclasses import dataclass

    from frozen_scale.config import register_section

    @dataclass
    class Other:
        seed: int = 0

    with pytest.raises(ValueError, match="already registered"):
        register_section("world", Other)


def test_the_world_is_the_eval_item_source_and_a_prep_command():
    from data_prep.cli import build_parser
    from data_prep.generated import generators
    from frozen_scale.eval.items import item_source
    from frozen_scale.world.items import WORLD_ITEMS
    from frozen_scale.world.text import build_tokenizer

    source = item_source()
    assert source.name == "world" and source.splits == WORLD_ITEMS.splits and item_source("world") is source
    items = source.items("caption", {"data": {"prompt": "caption :"}}, build_tokenizer(), seed=0, split="eval",
                         n=3, shots=0, ways=2, image_size=16)
    assert len(items) == 3 and all(it.meta["canonical"] for it in items)
    assert "synthetic" in generators()
    args = build_parser().parse_args(["synthetic", "--out", "x", "--count", "4", "--split", "eval"])
    src = generators()["synthetic"].build(args)
    assert src.describe() == {"type": "synthetic", "seed": 0, "split": "eval", "count": 4}
    row = next(iter(src.rows()))
    key, image, caption, meta = row["make"](row, 16)
    assert key == "eval-00000000" and image.size == (16, 16) and caption.startswith("a ")
    assert meta["split"] == "eval" and meta["questions"]
