"""sweeps/minilm_practice.py (notebook 06's stored runs): the results file was made with the script's settings and holds
every kind x seed of the plan, and the peak-memory points."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers.data import load_sweep_results  # noqa: E402
from helpers.text import LORA_KINDS  # noqa: E402
from sweeps import minilm_practice as sweep  # noqa: E402


def test_results_file_is_complete_and_current():
    data = json.loads(sweep.RESULTS.read_text())
    assert data["config"] == sweep.config()  # the settings (and notebook 05's lr choice) it was made with
    assert data["config"]["lr"] == 3e-3 and data["config"]["steps"] == 200
    keys = {r["key"] for r in data["runs"]}
    plan = {sweep.key(k, s) for k in LORA_KINDS if k != "ours" for s in sweep.SEEDS}
    assert keys == plan  # every kind x seed: the sweep is complete
    assert all(r["trainable"] == 76_038 and r["eval_steps"] == [50, 100, 150, 200] for r in data["runs"])
    memory = {m["key"] for m in data["memory"]}
    assert memory == {"rss/load/plain"} | {f"rss/{m}/{c}" for m in sweep.MEMORY_METHODS
                                            for c in ("plain", "checkpointing")}
    runs = load_sweep_results("minilm_practice")["runs"]
    assert len(runs) == len(keys) and runs.final_acc.between(0.8, 1.0).all()


def test_memory_code_trains_the_asked_method():
    code = sweep.memory_code("qlora-ours", True, steps=2)
    assert "method, checkpointing, steps = 'qlora-ours', True, 2" in code
    assert "use_reentrant" in code and "training_step" in code
