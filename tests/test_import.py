import subprocess
import sys


def test_import_is_cheap_and_touches_no_optional_backend():
    code = ("import sys, torchslim, torch; "
            "heavy = [m for m in ('torchao', 'transformers', 'torchslim.examples.minilm') if m in sys.modules]; "
            "print(heavy, torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] False"
