"""demo/app.py in a real browser: Debian's Chromium, driven by Selenium, against the app started
as a subprocess on a free 127.0.0.1 port with a tiny model. What the page shows must equal the
Predictor's rendering of the same input; nothing but 127.0.0.1 may be contacted, by the page
(Chromium resolves no other name; its request log is checked) or by the server (a socket
guard, tests/helpers/offline_server.py). Screenshots are saved in the test's tmp folder.

Needs ``chromium`` and ``chromium-driver`` (Debian: ``apt-get install -y chromium
chromium-driver``; .ci/run installs them); without them only the browser test is skipped
(the two-users and clean-up tests talk to the server directly)."""
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from helpers.photos import REPO as ROOT
from helpers.photos import TINY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="the browser test needs Chromium and its driver: apt-get install -y chromium chromium-driver",
)

VOCAB = "person, astronaut; cat; coffee cup; sky; grass"
STUFF = "sky; grass"
TASKS = ("semantic", "panoptic", "instance")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout=60, what="the page"):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny model with fixed random weights, saved: the app and the test load the same."""
    from detectron2.checkpoint import DetectionCheckpointer

    from maskclip_d2 import Predictor

    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    DetectionCheckpointer(Predictor(TINY).model, save_dir=str(folder)).save("tiny")
    return str(folder / "tiny.pth")


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    port, network_log, app_tmp = free_port(), folder / "network.log", folder / "tmp"
    network_log.write_text("")
    app_tmp.mkdir()
    env = dict(os.environ, MASKCLIP_NETWORK_LOG=str(network_log), TMPDIR=str(app_tmp),
               OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "helpers", "offline_server.py"), "--config-file", TINY,
         "--port", str(port), "--max-image-size", "400", "--examples",
         "--opts", "MODEL.WEIGHTS", checkpoint],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(folder),
    )
    url = f"http://127.0.0.1:{port}/"

    def up():
        if process.poll() is not None:
            raise AssertionError(f"the app exited: {(folder / 'server.log').read_text()[-3000:]}")
        try:
            return fetch(url)
        except OSError:
            return None

    try:
        wait_for(up, timeout=120, what="the app to serve")
        yield {"url": url, "network_log": network_log, "tmp": app_tmp, "process": process,
               "log": folder / "server.log"}
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1800",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver):
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def expected_rendering(checkpoint, rgb, threshold, vocab=VOCAB, stuff=STUFF, **options):
    """What the page must show: the Predictor's outputs, drawn as demo/demo.py draws them.
    Torch runs on one thread here, as in the server (OMP_NUM_THREADS=1): the random tiny
    model's near-tie scores otherwise follow the thread count."""
    from maskclip_d2.visualization import draw_outputs

    from maskclip_d2 import Predictor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor = Predictor(TINY, weights=checkpoint)
        vocabulary = [c.strip() for c in vocab.split(";")]
        stuff = [s.strip() for s in stuff.split(";") if s.strip()] or None
        cached = predictor.model_outputs(rgb, vocabulary=vocabulary, stuff=stuff)
        outputs = predictor.postprocess(cached, task="all", **options)
    finally:
        torch.set_num_threads(threads)
    drawn, segments = draw_outputs(rgb, outputs, vocabulary, TASKS, threshold)
    return outputs, drawn, segments


@needs_chromium
def test_the_app_in_a_browser(server, browser, checkpoint, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from maskclip_d2.mask_files import load_masks

    shots = tmp_path / "screenshots"
    shots.mkdir()
    scene = tmp_path / "scene.png"
    rgb = skimage.data.coffee()[::4, ::4].copy()  # (100, 150, 3)
    Image.fromarray(rgb).save(scene)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"these are notes, not a PNG")

    driver = browser
    driver.get(server["url"])
    css = driver.find_element
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#vocabulary textarea"), what="the form")

    def status():
        return css(By.CSS_SELECTOR, "#status").text

    def set_text(selector, text):
        box = css(By.CSS_SELECTOR, selector)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)

    def upload(path):
        css(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(str(path))
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#image-input img"), what="the upload preview")

    def pictures():
        images = {}
        for task in TASKS:
            src = css(By.CSS_SELECTOR, f"#output-{task} img").get_attribute("src")
            images[task] = np.asarray(Image.open(io.BytesIO(fetch(src))).convert("RGB"))
        return images

    def errors():
        return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".toast-body, .toast-text"))

    # 1. upload a scene, type a vocabulary, run
    upload(scene)
    set_text("#vocabulary textarea", VOCAB)
    set_text("#stuff textarea, #stuff input", STUFF)
    css(By.CSS_SELECTOR, "#run").click()
    wait_for(lambda: "model runs so far: 1" in status(), what="the first result")
    wait_for(lambda: all(driver.find_elements(By.CSS_SELECTOR, f"#output-{t} img") for t in TASKS),
             what="the three pictures")
    driver.save_screenshot(str(shots / "1_result.png"))
    outputs, drawn, segments = expected_rendering(checkpoint, rgb, 0.5)
    shown = pictures()
    for task in TASKS:
        assert np.array_equal(shown[task], drawn[task]), task
    # the segments table: one row per segment of the three tasks, the same classes
    table = css(By.CSS_SELECTOR, "#segments").text
    for task in TASKS:
        for s in segments[task]:
            assert s["class"] in table
    # the legend names the classes present
    legend = css(By.CSS_SELECTOR, "#legend").text
    assert {s["class"].split(",")[0] for t in TASKS for s in segments[t]} <= set(legend.split("\n"))

    # 2. a slider change re-draws from the cached outputs, without a model run
    set_text("#min-score input[type=number]", "0")
    css(By.CSS_SELECTOR, "#min-score input[type=number]").send_keys(Keys.TAB)
    wait_for(lambda: "no model run" in status(), what="the post-processed result")
    assert "model runs so far: 1" in status()
    _, drawn_low, segments_low = expected_rendering(checkpoint, rgb, 0.0)
    wait_for(lambda: np.array_equal(pictures()["instance"], drawn_low["instance"]), what="the new picture")
    assert "minimum score 0.00" in status()
    assert len(segments_low["instance"]) > len(segments["instance"])  # the picture really changed
    driver.save_screenshot(str(shots / "2_slider.png"))

    # 3. the download: the mask files of the shown result
    href = css(By.CSS_SELECTOR, "#download a").get_attribute("href")
    archive = zipfile.ZipFile(io.BytesIO(fetch(href)))
    assert sorted(archive.namelist()) == sorted(
        ["scene.panoptic.png", "scene.panoptic.json", "scene.semantic.png", "scene.instances.json",
         "categories.json"])
    archive.extractall(tmp_path / "download")
    loaded = load_masks(str(tmp_path / "download"), "scene")
    assert torch.equal(loaded["panoptic_seg"][0], outputs["panoptic_seg"][0])
    assert loaded["panoptic_seg"][1] == outputs["panoptic_seg"][1]
    assert torch.equal(loaded["sem_seg"].argmax(0), outputs["sem_seg"].argmax(0))
    assert torch.equal(loaded["instances"].pred_masks, outputs["instances"].pred_masks)

    # 4. bad input: an empty vocabulary, then a file that is not an image; each shows its
    # error and the next request works
    set_text("#vocabulary textarea", " ; ; ")
    css(By.CSS_SELECTOR, "#run").click()
    wait_for(lambda: "vocabulary is empty" in errors(), what="the empty-vocabulary error")
    driver.save_screenshot(str(shots / "3_empty_vocabulary.png"))
    assert "Error:" in status() and "vocabulary is empty" in status()
    assert np.array_equal(pictures()["instance"], drawn_low["instance"])  # the last result stays
    set_text("#vocabulary textarea", "cat; sky, heaven")
    set_text("#stuff textarea, #stuff input", "sky")
    css(By.CSS_SELECTOR, "#run").click()
    wait_for(lambda: "model runs so far: 2" in status(), what="the run after the error")

    css(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(str(not_an_image))
    time.sleep(1)
    css(By.CSS_SELECTOR, "#run").click()
    wait_for(lambda: "not an image" in errors(), what="the not-an-image error")
    assert "notes.png is not an image" in status()
    driver.save_screenshot(str(shots / "4_not_an_image.png"))
    upload(scene)
    css(By.CSS_SELECTOR, "#run").click()
    wait_for(lambda: "model runs so far: 3" in status(), what="the run after the bad upload")
    print(f"screenshots: {shots}")

    # 5. nothing but 127.0.0.1 was contacted, by the page or by the server
    port = server["url"].split(":")[2].rstrip("/")
    network = [u for u in requested_urls(driver) if u.split(":")[0] in ("http", "https", "ws", "wss")]
    assert any(u.startswith(f"http://127.0.0.1:{port}/") for u in network)  # the log works
    foreign = [u for u in network if not u.startswith((f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/"))]
    assert not foreign, foreign
    assert server["network_log"].read_text() == ""


def test_two_users_at_once_each_get_their_own_result(server, checkpoint, tmp_path):
    """Two clients of the page's API at the same time (Gradio's queue), other vocabularies:
    each segments table is that of its own vocabulary."""
    import threading

    from gradio_client import Client, handle_file

    scene = tmp_path / "chelsea.png"
    rgb = skimage.data.chelsea()[::4, ::4].copy()
    Image.fromarray(rgb).save(scene)
    vocabularies = ["cat; sofa; wall", "dog, puppy; floor; grass"]
    results = {}

    def user(vocab):
        client = Client(server["url"], verbose=False)
        results[vocab] = client.predict(handle_file(str(scene)), vocab, [], "", 0.0, 0.5, 100, 0.0,
                                        api_name="/on_run")

    users = [threading.Thread(target=user, args=(v,)) for v in vocabularies]
    for u in users:
        u.start()
    for u in users:
        u.join()
    for vocab in vocabularies:
        _, _, segments = expected_rendering(checkpoint, rgb, 0.0, vocab=vocab, stuff="",
                                            object_mask_threshold=0.0)
        table = results[vocab][-3]  # (pictures, legend, table, zip, status: no State)
        expected = [[t, s["class"], s.get("score"), s["area"]] for t in TASKS for s in segments[t]]
        assert table["data"] == expected, vocab
    assert server["network_log"].read_text() == ""


def test_a_results_files_are_served_from_its_request_folder_not_from_gradios_cache(server, tmp_path):
    """Gradio's cache is emptied of files older than its delete_cache age while a page may
    still show them; a result's pictures and zip are served from the app's request folder,
    which keeps the last --keep-requests requests (tests/e2e/test_app.py)."""
    from gradio_client import Client, handle_file

    scene = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()[::4, ::4].copy()).save(scene)
    client = Client(server["url"], verbose=False, download_files=False)
    result = client.predict(handle_file(str(scene)), "cat; sofa", [], "", 0.0, 0.5, 100, 0.0,
                            api_name="/on_run")
    pictures, download = result[:3], result[-2]  # (pictures, legend, table, zip, status)
    for served in (*pictures, download):
        path = os.path.realpath(served["path"])
        assert os.path.dirname(os.path.dirname(path)).endswith(os.sep + "requests"), path
        assert path.startswith(os.path.realpath(server["tmp"])), path
    assert os.path.basename(download["path"]) == "chelsea_masks.zip"
    archive = zipfile.ZipFile(io.BytesIO(fetch(download["url"])))
    assert "chelsea.panoptic.png" in archive.namelist()
    shown = np.asarray(Image.open(io.BytesIO(fetch(pictures[0]["url"]))))
    assert np.array_equal(shown, np.asarray(Image.open(pictures[0]["path"])))


def test_the_app_removes_its_temporary_files_at_exit(server):
    # runs after the browser test (same module-scoped server): stop it, nothing remains
    process = server["process"]
    assert any(server["tmp"].iterdir())  # it did write its files there
    process.terminate()
    process.wait(timeout=30)
    assert list(server["tmp"].iterdir()) == [], server["log"].read_text()[-2000:]
    # and nothing beside its code (Gradio writes .pyi files for component subclasses)
    assert not os.path.exists(os.path.join(ROOT, "demo", "app.pyi"))
