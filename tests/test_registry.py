import sys
import textwrap
from pathlib import Path

import pytest

import mme3dr
from mme3dr.adapters import (GENERATORS, Generator, coerce_model_args, create_generator, parse_model_args,
                             parse_value)
from mme3dr.registry import Registry, import_target, plain_text


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
    assert "my-plugin" in reg.names() and reg.origin("my-plugin") == "entry-point plugin-gen-pkg"
    assert reg.describe("my-plugin") == "A plug-in generator."  # read from the source, before any import
    assert "plugin_gen_pkg" not in sys.modules
    assert reg.get("my-plugin").__name__ == "PluginGen"


def test_bundled_adapters_come_through_entry_points_and_mme3dr_never_names_reference_policy():
    """The dependency runs one way: mme3dr's own code does not mention reference_policy; the reference and
    released-checkpoint adapters are registered by pyproject.toml's entry points, like any plug-in."""
    for name in ("reference", "ar3d-r1", "shapellm-omni"):
        assert GENERATORS.origin(name) == "entry-point mme3dr"
    package = Path(mme3dr.__file__).parent
    offenders = [str(p) for p in package.rglob("*.py") if "reference_policy" in p.read_text()]
    assert offenders == []


def test_models_are_described_without_importing_them():
    text = GENERATORS.describe("reference")
    assert text.startswith("The bundled reference policy") and "``" not in text and ":class:" not in text
    assert plain_text("A :class:`~mme3dr.adapters.Generator` and ``x=1`` and :func:`f`") == "A Generator and x=1 and f"


def test_create_generator_checks_arguments(tmp_path):
    with pytest.raises(TypeError, match=r"Did you mean 'root'.*It takes: root, up_axis"):
        create_generator("folder", rot=str(tmp_path))
    gen = create_generator("folder", root=str(tmp_path))
    assert isinstance(gen, Generator)


def test_parse_model_args():
    assert parse_model_args(["a=1", "b=2.5", "c=true", "d=x=y", "e= spaced "]) == {
        "a": "1", "b": "2.5", "c": "true", "d": "x=y", "e": " spaced "}
    with pytest.raises(ValueError, match="key=value"):
        parse_model_args(["novalue"])


def test_model_args_are_converted_by_each_parameters_type_before_any_work(tmp_path):
    """cmd=true stays text (a program name), timeout=abc is refused naming the argument, numbers become numbers."""
    assert coerce_model_args("command", {"cmd": "true", "timeout": "5", "ext": "ply"}) == {
        "cmd": "true", "timeout": 5.0, "ext": "ply"}
    with pytest.raises(ValueError, match=r"--model-arg timeout='abc': timeout takes a number"):
        coerce_model_args("command", {"cmd": "x {output}", "timeout": "abc"})
    with pytest.raises(ValueError, match=r"temperature='abc': temperature takes a number"):
        create_generator("reference", temperature="abc")
    with pytest.raises(ValueError, match=r"batch_size takes an integer"):
        create_generator("reference", batch_size="2.5")
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        create_generator("reference", temperature="0")
    assert create_generator("reference", temperature="0.5", top_k="3").top_k == 3
    # unannotated keyword arguments (a user factory behind the python adapter) keep the old best-effort parsing
    assert parse_value("3") == 3 and parse_value("true") is True and parse_value("x") == "x"


def test_an_unusable_device_is_refused_once_up_front():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match=r"device 'cuda': no CUDA GPU is visible on this machine; use device=cpu"):
        create_generator("reference", device="cuda")
    with pytest.raises(ValueError, match=r"device 'gpu0' is not a torch device"):
        create_generator("reference", device="gpu0")
