"""The engine must import and run without torch, train/ or export/ (DESIGN §1)."""

import subprocess
import sys
import textwrap


def test_engine_imports_with_torch_unimportable():
    code = textwrap.dedent(
        """
        import sys

        class Block:
            # Make torch & co. unimportable, as on a lean install.
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "torchvision", "timm", "onnxscript"}:
                    raise ImportError(f"blocked for the lean-import test: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import pkgutil, importlib
        import clumpdet.engine as engine
        names = [m.name for m in pkgutil.iter_modules(engine.__path__, "clumpdet.engine.")]
        for name in names:
            importlib.import_module(name)
        bad = sorted(m for m in sys.modules
                     if m.split(".")[0] in {"torch", "torchvision", "timm"}
                     or m.startswith(("clumpdet.train", "clumpdet.export")))
        assert not bad, bad
        print(len(names))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 3  # contracts, preprocess, cli at least


def test_subcommand_without_its_extra_names_the_extra():
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "torchvision", "timm"}:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Block())
        from clumpdet.engine.cli import main
        sys.exit(main(["train", "--data", "x", "--out", "y", "--epochs", "1"]))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    assert "pip install 'clumpdet[train]'" in result.stderr
    assert "Traceback" not in result.stderr
