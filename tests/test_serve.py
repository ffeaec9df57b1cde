"""The web demo's API against a live server on a free local port: generation, names, search, depth plans,
validation, the queue limit, session isolation, fuzzed inputs, and `var-engine serve` from an empty folder."""
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

gradio = pytest.importorskip("gradio", reason="the web demo needs the 'serve' extra: pip install -e '.[serve]'")
gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")
from PIL import Image  # noqa: E402

from var_engine import Pipeline  # noqa: E402
from var_engine_serve import Limits  # noqa: E402
from var_engine_serve.app import ServeSettings, launch  # noqa: E402

QUEUE_SIZE = 2
# Gradio's queue calls pandas APIs that pandas 3 deprecates; not this project's warnings
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
DEFAULTS = [3, 1, 0, 1.5, 512, 0.96, False, False, 8, 4, 0, "off", 4]  # the 13 inputs of /generate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """(pipeline, app, url) of a server started for these tests."""
    pipe = Pipeline.from_pretrained()
    settings = ServeSettings(port=free_port(), queue_size=QUEUE_SIZE, limits=Limits(max_images=8, max_budget=4))
    app = launch(pipe, settings, block=False)
    yield pipe, app, app.local_url
    app.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server[2], verbose=False)


def pixels(gallery) -> np.ndarray:
    return np.stack([np.asarray(Image.open(item["image"]).convert("RGB")) for item in gallery])


def library_pixels(pipe, labels, **kwargs) -> np.ndarray:
    images = pipe.generate(labels, **kwargs).images
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_generate_by_id_and_by_name_returns_the_library_images(server, client):
    pipe = server[0]
    gallery, previews, stats, seed = client.predict(3, 2, 5, 1.5, api_name="/generate")
    assert len(gallery) == 2 and seed == 5 and stats["seed"] == 5 and stats["class"] == 3
    assert [item["caption"] for item in gallery] == ["3", "3"]
    assert np.array_equal(pixels(gallery), library_pixels(pipe, [3, 3], seed=5, cfg=1.5, top_k=512))
    by_name = client.predict("3", 2, 5, 1.5, api_name="/generate")[0]
    assert np.array_equal(pixels(by_name), pixels(gallery))
    assert stats["kv_bytes"] > 0 and stats["seconds"] > 0
    assert stats["depth_plan"] == {"depth": 8, "switch_scale": None} and stats["layers_per_scale"] == [8] * 7
    assert len(previews) == pipe.config.transformer.num_scales  # one coarse-to-fine image per scale


def test_a_random_seed_is_returned_and_reproduces_the_images(client):
    gallery, _, stats, seed = client.predict(7, 2, -1, 1.5, api_name="/generate")
    assert isinstance(seed, (int, float)) and seed == stats["seed"] and 0 <= seed < 2**32
    again = client.predict(7, 2, int(seed), 1.5, api_name="/generate")[0]
    assert np.array_equal(pixels(again), pixels(gallery))


def test_search_reports_the_winners_scores(client):
    gallery, _, stats, _ = client.predict(4, 2, 0, 1.5, 512, 0.96, False, False, 8, 4, 0, "best_of_n", 2,
                                          api_name="/generate")
    assert len(gallery) == 2
    assert stats["search"]["mode"] == "best_of_n" and stats["search"]["budget"] == 2
    assert len(stats["search"]["winner_scores"]) == 2
    assert all(math.isfinite(score) for score in stats["search"]["winner_scores"])
    assert stats["compute"] == pytest.approx(4.0)


def test_depth_plan_and_memory_budget(server, client):
    pipe = server[0]
    _, _, stats, _ = client.predict(2, 1, 0, 1.5, 512, 0.96, False, False, 2, 3, 0, "off", 4, api_name="/generate")
    assert stats["depth_plan"] == {"depth": 2, "switch_scale": 3} and stats["layers_per_scale"] == [8, 8, 8] + [2] * 4
    budget = 2 * pipe.kv_bytes_per_image(cfg=1.5) / 2**20 * 0.6  # 60% of what full depth needs for 2 images
    _, _, stats, _ = client.predict(2, 2, 0, 1.5, 512, 0.96, False, False, 8, 4, budget, "off", 4,
                                    api_name="/generate")
    plan = pipe.plan_for_memory(2, int(budget * 2**20), cfg=1.5)
    assert stats["depth_plan"] == {"depth": plan.depth, "switch_scale": plan.switch_scale}
    assert stats["kv_bytes"] <= budget * 2**20


BAD = [
    ((42, 1, 0, 1.5), "out of range"), (("zebra", 1, 0, 1.5), "unknown class"), ((3, 0, 0, 1.5), "minimum"),
    ((3, 100, 0, 1.5), "maximum"), ((3, 1, 0, -2.0), "minimum"), (("; rm -rf / #", 1, 0, 1.5), "unknown class"),
    ((3, 1, 2**40, 1.5), "seed"), ((3, 1, 0.5, 1.5), "seed"), (("x" * 500, 1, 0, 1.5), "too long"),
]


@pytest.mark.parametrize("inputs, message", BAD, ids=[str(i) for i, _ in BAD])
def test_bad_inputs_are_clear_errors(client, inputs, message):
    with pytest.raises(Exception) as e:
        client.predict(*inputs, api_name="/generate")
    assert message in str(e.value).lower() and "Traceback" not in str(e.value)


def call_raw(url: str, data) -> tuple[str, str]:
    """POST raw JSON (NaN allowed) to /generate; (final event, its data) of the result stream."""
    base = url.rstrip("/") + "/gradio_api/call/generate"
    r = httpx.post(base, content=json.dumps({"data": data}, allow_nan=True),
                   headers={"content-type": "application/json"}, timeout=30)
    if r.status_code != 200:
        return "rejected", r.text
    event_id = r.json()["event_id"]
    with httpx.stream("GET", f"{base}/{event_id}", timeout=60) as s:
        lines = [line for line in s.iter_lines() if line.strip()]
    events = [line.split(":", 1)[1].strip() for line in lines if line.startswith("event:")]
    data_lines = [line.split(":", 1)[1].strip() for line in lines if line.startswith("data:")]
    return events[-1], data_lines[-1] if data_lines else ""


@pytest.mark.parametrize("cfg", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_through_raw_json_are_errors(server, cfg):
    event, data = call_raw(server[2], [3, 1, 0, cfg, *DEFAULTS[4:]])
    assert event == "error" and ("cfg" in data.lower() or "value" in data.lower()), (event, data)


def test_a_full_queue_refuses_with_a_message(server, client):
    pipe = server[0]
    with pipe.generation_lock:  # the first request waits inside generate, the next QUEUE_SIZE wait in the queue
        first = client.submit(1, 1, 0, 1.5, api_name="/generate")
        deadline = time.time() + 30
        while first.status().code.name != "PROCESSING" and time.time() < deadline:
            time.sleep(0.05)
        jobs = [client.submit(1, 1, i, 1.5, api_name="/generate") for i in range(QUEUE_SIZE + 2)]
        time.sleep(1.0)
    outcomes = []
    for job in [first, *jobs]:
        try:
            outcomes.append(len(job.result(timeout=60)[0]))
        except Exception as e:  # noqa: BLE001
            outcomes.append(str(e))
    served = [o for o in outcomes if o == 1]
    refused = [o for o in outcomes if isinstance(o, str)]
    assert len(served) == 1 + QUEUE_SIZE and len(refused) == 2, outcomes
    assert all("queue is full" in o.lower() for o in refused)
    assert len(client.predict(1, 1, 0, 1.5, api_name="/generate")[0]) == 1


def test_concurrent_sessions_get_their_own_settings(server):
    pipe, _, url = server
    requests = [(3, 2, 1, 1.5), (8, 3, 2, 4.0), (5, 1, 3, 0.0)]
    results = [None] * len(requests)

    def run(i):
        results[i] = gradio_client.Client(url, verbose=False).predict(*requests[i], api_name="/generate")[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (label, num, seed, cfg), gallery in zip(requests, results):
        assert np.array_equal(pixels(gallery), library_pixels(pipe, [label] * num, seed=seed, cfg=cfg, top_k=512))


def test_load_benchmark_clients_count_served_and_refused(server):
    from bench.serve_load import run_level

    requests = [(i, 1, i, 1.5) for i in range(3)]
    for kind in ("gradio", "http"):
        row = run_level(server[2], 2, requests, kind)
        assert (row["served"], row["refused"], row["failed"]) == (3, 0, 0), row
        assert row["p50_s"] <= row["p95_s"]


def test_the_api_takes_no_files_and_serves_no_other_paths(server, client):
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]
    names = [p["parameter_name"] for p in info["parameters"]]
    assert names[:4] == ["class_", "num_images", "seed", "cfg"]
    assert not any("file" in json.dumps(p["type"]).lower() for p in info["parameters"])
    secret = Path(server[0].meta["path"]) / "config.json"  # a file the server can read, never serves
    for path in (f"gradio_api/file={secret}", "gradio_api/file=/etc/passwd", f"file={secret}"):
        r = httpx.get(server[2] + path, timeout=30)
        assert r.status_code in (403, 404) and "class_names" not in r.text and "root:" not in r.text, path


def test_about_shows_the_model_card(server):
    pipe, _, url = server
    card = (Path(pipe.meta["path"]) / "README.md").read_text().splitlines()[0].lstrip("# ")
    page = httpx.get(url + "config", timeout=30).json()
    texts = [c.get("props", {}).get("value") for c in page["components"]]
    about = next(t for t in texts if isinstance(t, str) and card in t)
    assert "**Parameters**: transformer 2.50M" in about and "samples.png" not in about


def test_serve_command_from_an_empty_folder(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VAR_ENGINE_CHECKPOINT"}
    proc = subprocess.Popen([sys.executable, "-m", "var_engine.cli", "serve", "--port", str(port), "--threads", "1"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        gallery = gradio_client.Client(url, verbose=False).predict("9", 1, 0, 1.5, api_name="/generate")[0]
        assert len(gallery) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert list(tmp_path.iterdir()) == []  # nothing written into the working folder


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the dev extra installs it
    st = None

if st is None:
    def test_fuzzed_inputs_get_an_answer_and_the_server_stays_up():
        pytest.skip("hypothesis is not installed (pip install -e '.[dev]')")
else:
    JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                     st.lists(st.integers(-3, 20), max_size=3),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(inputs=st.tuples(JUNK, JUNK, JUNK, JUNK), position=st.integers(0, 12), extra=JUNK)
    def test_fuzzed_inputs_get_an_answer_and_the_server_stays_up(server, inputs, position, extra):
        data = [*inputs, *DEFAULTS[4:]]
        data[position] = extra
        event, message = call_raw(server[2], data)
        assert event in ("complete", "error", "rejected"), (event, message)
        assert "Traceback" not in message, (data, message)
        if event == "error":
            assert json.loads(message)["error"].strip(), (data, message)  # the reason, for the user


def test_the_server_answers_after_bad_and_fuzzed_inputs(client):
    assert len(client.predict(6, 1, 0, 1.5, api_name="/generate")[0]) == 1


def test_the_class_picker_of_an_official_model_lists_the_imagenet_names(official):
    from var_engine_serve.app import build_app

    app = build_app(official("tiny64_d2")[0], ServeSettings(port=None))
    picker = next(c for c in app.config["components"] if c.get("props", {}).get("elem_id") == "class")
    labels = [choice[0] for choice in picker["props"]["choices"]]
    assert len(labels) == 1000 and labels[207] == "207: golden retriever" and labels[517] == "517: crane"


def editor_value(tmp_path, image: np.ndarray, painted: tuple[slice, slice] | None):
    from gradio_client import handle_file

    Image.fromarray(image).save(tmp_path / "in.png")
    layers = []
    if painted is not None:
        layer = np.zeros((*image.shape[:2], 4), np.uint8)
        layer[painted] = (255, 0, 255, 255)
        Image.fromarray(layer).save(tmp_path / "layer.png")
        layers = [handle_file(str(tmp_path / "layer.png"))]
    return {"background": handle_file(str(tmp_path / "in.png")), "layers": layers, "composite": None}


def test_edit_returns_the_library_edit_of_the_painted_region(server, client, tmp_path):
    pipe = server[0]
    image = library_pixels(pipe, [5], seed=1)[0]
    box = (slice(8, 24), slice(8, 24))
    gallery, stats, seed = client.predict(editor_value(tmp_path, image, box), "none: in-paint without a class", 2,
                                          3, 1.5, 0, False, api_name="/edit")
    assert seed == 3 and stats["images"] == 2 and stats["class"] is None
    assert stats["regenerated_fraction"] == 0.25
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    ref = pipe.edit(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, mask, None, num=2, seed=3, cfg=1.5)
    expected = ref.images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(pixels(gallery[1:]), expected)
    shown = pixels(gallery[:1])[0]
    assert np.array_equal(shown[:8], image[:8])  # the kept part of the input is shown untouched
    assert not np.array_equal(shown[8:24, 8:24], image[8:24, 8:24])  # the regenerated part is tinted


def test_edit_outpaints_a_border_and_refuses_bad_inputs(server, client, tmp_path):
    pipe = server[0]
    image = library_pixels(pipe, [2], seed=4)[0]
    gallery, stats, _ = client.predict(editor_value(tmp_path, image, None), "2", 1, 0, 1.5, 4, False,
                                       api_name="/edit")
    assert stats["outpaint"] == 4 and stats["class"] == 2 and len(gallery) == 2
    assert stats["regenerated_fraction"] == pytest.approx(1 - (24 / 32) ** 2)
    for args, message in [((editor_value(tmp_path, image, None), "2", 1, 0, 1.5, 0, False), "paint over"),
                          ((editor_value(tmp_path, image, (slice(0, 4), slice(0, 4))), "42", 1, 0, 1.5, 0, False),
                           "42"),
                          ((editor_value(tmp_path, image, (slice(0, 4), slice(0, 4))), "2", 1, 0, 99, 0, False),
                           "cfg|maximum"),
                          ((editor_value(tmp_path, image, None), "2", 1, 0, 1.5, 99, False), "out-paint border|maximum")]:
        with pytest.raises(gradio_client.exceptions.AppError, match=message):
            client.predict(*args, api_name="/edit")
    (tmp_path / "note.png").write_text("not an image")
    from gradio_client import handle_file
    with pytest.raises(gradio_client.exceptions.AppError):
        client.predict({"background": handle_file(str(tmp_path / "note.png")), "layers": [], "composite": None},
                       "2", 1, 0, 1.5, 4, False, api_name="/edit")
    assert client.predict(3, *DEFAULTS[1:], api_name="/generate")[3] == 0  # the server still answers


def test_subject_tab_tunes_loads_and_generates_per_session(server, tmp_path):
    """A session's subject comes from a tune or an uploaded adapter; its images are the library's with that
    adapter, and another session (and /generate) keep the base model."""
    from gradio_client import handle_file

    from var_engine.checkpoints import save_adapter
    from var_engine.finetune import FinetuneConfig, default_train_config, finetune_subject

    pipe = server[0]
    pics = []
    for i in range(3):
        image = np.zeros((32, 32, 3), np.uint8)
        image[6 + i:26, 10:22] = (200, 90, 30)
        Image.fromarray(image).save(tmp_path / f"p{i}.png")
        pics.append(handle_file(str(tmp_path / f"p{i}.png")))
    a, b = gradio_client.Client(server[2], verbose=False), gradio_client.Client(server[2], verbose=False)
    with pytest.raises(gradio_client.exceptions.AppError, match="no subject"):
        b.predict(2, 0, 1.5, api_name="/generate_subject")
    status, adapter_file = a.predict(pics, 2, 0, api_name="/tune")
    assert "class id 11" in status and adapter_file.endswith(".safetensors")
    gallery, stats, _ = a.predict(2, 5, 1.5, api_name="/generate_subject")
    expected = pipe.generate([11, 11], seed=5, cfg=1.5, adapter=adapter_file).images
    assert stats["class"] == 11 and np.array_equal(pixels(gallery),
                                                    expected.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy())
    base = b.predict(3, *DEFAULTS[1:], api_name="/generate")[0]
    assert np.array_equal(pixels(base), library_pixels(pipe, [3], seed=0, cfg=1.5, top_k=512, top_p=0.96))
    # an adapter tuned in the library, uploaded by the other session
    images = torch.from_numpy(np.stack([np.asarray(Image.open(tmp_path / f"p{i}.png")) for i in range(3)]))
    result = finetune_subject(pipe.transformer, pipe.tokenizer, images.permute(0, 3, 1, 2).float() / 127.5 - 1,
                              FinetuneConfig(class_id=4, prior_samples=4, prior_batch=2),
                              default_train_config(steps=2, seed=1))
    save_adapter(tmp_path / "four.safetensors", result.adapter)
    status, _ = b.predict(handle_file(str(tmp_path / "four.safetensors")), api_name="/load_adapter")
    assert "class id 4" in status
    gallery, stats, _ = b.predict(1, 0, 1.5, api_name="/generate_subject")
    assert stats["class"] == 4
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(gradio_client.exceptions.AppError):
        b.predict(handle_file(str(tmp_path / "bad.safetensors")), api_name="/load_adapter")
    (tmp_path / "note.png").write_text("not an image")
    with pytest.raises(gradio_client.exceptions.AppError, match="image"):
        a.predict([handle_file(str(tmp_path / "note.png"))], 2, 0, api_name="/tune")
