import sys
import textwrap

import pytest

from mme3dr.adapters import GENERATORS, Generator, create_generator, parse_model_args
from mme3dr.registry import Registry, import_target


def test_lazy_entries_import_only_on_use(tmp_path, monkeypatch):
    (tmp_path / "lazy_mod_for_test.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[int] = Registry("thing")
    reg.register("v", "lazy_mod_for_test:VALUE")
    assert "v" in reg and "lazy_mod_for_test" not in sys.modules
    assert reg.get("v") == 42 and "lazy_mod_for_test" in sys.modules


def test_unknown_name_suggests_the_closest():
    with pytest.raises(KeyError, match="unknown model 'foldr'. Did you mean 'folder'"):
        GENERATORS.get("foldr")
    with pytest.raises(KeyError, match="Registered: .*command.*folder.*python"):
        GENERATORS.get("zzz")


def test_duplicate_registration_and_decorator():
    reg: Registry[type] = Registry("thing")

    @reg.register("a")
    class A:
        pass

    assert reg.get("a") is A
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", int)
    reg.register("a", int, overwrite=True)
    assert reg.get("a") is int


def test_import_target_errors():
    with pytest.raises(ValueError, match="module:attr"):
        import_target("no_colon")
    with pytest.raises(ImportError, match="cannot import module"):
        import_target("no_such_module_xyz:thing")
    with pytest.raises(ImportError, match="has no attribute"):
        import_target("mme3dr:nope")


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    """A third-party package registers through the ``mme3dr.generators`` entry-point group."""
    (tmp_path / "plugin_gen_pkg.py").write_text(textwrap.dedent("""
        from mme3dr.adapters import Generator
        class PluginGen(Generator):
            '''A plug-in generator.'''
            def __init__(self, size: int = 1):
                self.size = size
            def generate_one(self, request):
                raise RuntimeError("not used")
    """))
    dist = tmp_path / "plugin_gen_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-gen-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mme3dr.generators]\nmy-plugin = plugin_gen_pkg:PluginGen\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("model", entry_point_group="mme3dr.generators")
    assert reg.names() == ["my-plugin"] and reg.origin("my-plugin") == "entry-point plugin-gen-pkg"
    assert reg.get("my-plugin").__name__ == "PluginGen"


def test_create_generator_checks_arguments(tmp_path):
    with pytest.raises(TypeError, match=r"Did you mean 'root'.*It takes: root, up_axis"):
        create_generator("folder", rot=str(tmp_path))
    gen = create_generator("folder", root=str(tmp_path))
    assert isinstance(gen, Generator)


def test_parse_model_args():
    assert parse_model_args(["a=1", "b=2.5", "c=true", "d=x=y", "e= spaced "]) == {
        "a": 1, "b": 2.5, "c": True, "d": "x=y", "e": " spaced "}
    with pytest.raises(ValueError, match="key=value"):
        parse_model_args(["novalue"])
