"""The demo (qsattn_fast.demo) runs and both backends select the same queries on the example feature map."""
from qsattn_fast import demo


def test_demo_small(capsys):
    demo.main(["--side", "12", "--channels", "16", "-k", "10", "--mode", "local_global"])
    out = capsys.readouterr().out
    assert "both backends select the same 10 queries: True" in out
    assert out.count("#") >= 1 and "reference" in out and "extra peak MiB" in out
