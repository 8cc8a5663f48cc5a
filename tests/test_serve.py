"""`tinystories serve`: the API through starlette's TestClient, and the page in a real headless Chromium."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from fake_llm import ScriptedBackend, register_scripted  # noqa: E402
from tinystories.cli import main  # noqa: E402
from tinystories.pipeline.registry import load_run_config  # noqa: E402
from tinystories.tryout.sample import INSTRUCTION_FORMAT, PLAIN, Prompt, Sampling, load_models, sample_one  # noqa: E402
from tinystories.tryout.serve import create_app  # noqa: E402
from tryout_fixtures import CONTEXT, MODELS, make_tryout_run  # noqa: E402

JUDGE_REPLY = "Assessment: A short story about a dog.\nGrammar: 7/10\nCreativity: 6/10\nConsistency: 8/10\nPlot: 5/10\nAge group: C"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_tryout_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture
def client(run_dir):
    with TestClient(create_app(run_dir, load_run_config(None, []), device="cpu")) as test_client:
        yield test_client


def test_page_and_model_list(client, run_dir):
    page = client.get("/")
    assert page.status_code == 200, "the page is not served"
    assert 'id="generate"' in page.text, "the page has no generate button"
    info = client.get("/api/models").json()
    assert [m["name"] for m in info["models"]] == list(MODELS), "the model list is not the run's models"
    assert [m["kind"] for m in info["models"]] == ["base", "instruct"], "model kinds are wrong"
    assert info["judge"]["backend"] == "embedded", "the page is not told which judge grades"


def test_sample_matches_the_command_line(client, run_dir):
    body = {"model": "sft/tiny", "text": "Words: dog, ball", "instruct": True, "seed": 7, "max_new_tokens": 20}
    got = client.post("/api/sample", json=body)
    assert got.status_code == 200, got.text
    [model] = load_models(run_dir, ["sft/tiny"], "cpu")
    expected = sample_one(model, Prompt("Words: dog, ball", instruct=True), Sampling(seed=7, max_new_tokens=20))
    assert got.json()["text"] == expected.text, "the page's story differs from `tinystories sample` with the same seed"
    assert got.json()["framing"] == INSTRUCTION_FORMAT, "the sft model did not get the instruction format"
    base = client.post("/api/sample", json={**body, "model": "pretrain/tiny"}).json()
    assert base["framing"] == PLAIN, "a base model got the instruction format"


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"model": "pretrain/huge", "text": "A dog"}, 404, "not in this run"),
        ({"model": "sft/tiny", "text": " ", "instruct": True}, 400, "instruction is empty"),
        ({"model": "sft/tiny", "text": "A dog", "max_new_tokens": 500}, 400, f"has a context of {CONTEXT} tokens"),
        ({"model": "sft/tiny", "text": "A dog", "top_p": 0}, 422, "top_p"),
    ],
)
def test_bad_requests_say_why(client, body, status, message):
    got = client.post("/api/sample", json=body)
    assert got.status_code == status, got.text
    assert message in got.text, f"expected {message!r} in {got.text}"


def test_grade_runs_the_configured_judge(client):
    backend = register_scripted(ScriptedBackend(lambda request: JUDGE_REPLY))
    got = client.post("/api/grade", json={"task": "continue", "prompt": "Once upon a time", "text": " there was a dog."})
    assert got.status_code == 200, got.text
    result = got.json()
    assert result["grades"] == {"grammar": 7, "creativity": 6, "consistency": 8, "plot": 5}, f"grades misread: {result}"
    assert result["age_group"] == "C", "age group misread"
    [request] = backend.calls
    sent = request.messages[-1]["content"]
    assert "Once upon a time *** there was a dog." in sent, "the judge did not get the paper's beginning *** completion prompt"


def test_a_judge_without_grades_is_a_clear_error(client):
    register_scripted(ScriptedBackend(lambda request: "I like this story."))
    got = client.post("/api/grade", json={"task": "instruct", "prompt": "Words: dog", "text": "A dog ran."})
    assert got.status_code == 502, got.text
    assert "gave no grades" in got.json()["detail"], got.text


def test_serve_refuses_a_run_without_models(tmp_path, capsys):
    assert main(["serve", "--run-dir", str(tmp_path)]) == 2, "serving an empty run must fail"
    assert "no trained model" in capsys.readouterr().err, "the error does not say what is missing"


def test_serve_names_a_taken_port(run_dir, capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--run-dir", str(run_dir), "--device", "cpu", "--port", str(port)]) == 2, "a taken port must fail"
    assert f"--port {port}: cannot listen there" in capsys.readouterr().err, "the error does not name the port"


# -- the page in a real browser ------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(run_dir):
    """The app on a real uvicorn server in a thread, at http://127.0.0.1:<port>/."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(run_dir, load_run_config(None, []), device="cpu"), host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 20 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}/"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def browser(monkeypatch):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no Chromium: install chromium and chromium-driver (apt-get install chromium chromium-driver; `make setup` does it as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.mark.browser
def test_page_in_a_browser_shows_every_picked_model_side_by_side(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(served)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input[name=model]")) == 2)
    boxes = {box.get_attribute("value"): box for box in browser.find_elements(By.CSS_SELECTOR, "input[name=model]")}
    assert set(boxes) == set(MODELS), f"the page lists {sorted(boxes)}"
    boxes["sft/tiny"].click()  # unpick, then pick again: what a user does to choose
    boxes["sft/tiny"].click()
    browser.find_element(By.ID, "prompt").send_keys("Once upon a time")
    browser.find_element(By.ID, "max_new_tokens").clear()
    browser.find_element(By.ID, "max_new_tokens").send_keys("20")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".column[data-state=done]")) == 2)
    columns = browser.find_elements(By.CSS_SELECTOR, ".column")
    assert [c.get_attribute("data-model") for c in columns] == list(MODELS), "a column per picked model, in order"
    for column in columns:
        assert column.find_element(By.CSS_SELECTOR, ".beginning").text == "Once upon a time", "the beginning is not shown"
        assert "tokens" in column.find_element(By.CSS_SELECTOR, ".footer").text, "no length under a completion"
    first, second = (c.rect for c in columns)
    assert abs(first["y"] - second["y"]) < 2 and second["x"] > first["x"], f"columns are not side by side: {first} {second}"

    register_scripted(ScriptedBackend(lambda request: JUDGE_REPLY))
    columns[1].find_element(By.CSS_SELECTOR, "button.grade").click()
    wait.until(lambda d: columns[1].find_element(By.CSS_SELECTOR, ".grades").get_attribute("data-state") == "done")
    assert "7/10" in columns[1].find_element(By.CSS_SELECTOR, ".grades").text, "the judge's grades are not shown"


@pytest.mark.browser
def test_page_in_a_browser_with_one_model_unpicked(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(served)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input[name=model]")) == 2)
    browser.find_element(By.CSS_SELECTOR, "input[name=model][value='pretrain/tiny']").click()
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=instruct]").click()
    browser.find_element(By.ID, "prompt").send_keys("Words: dog, ball, happy")
    browser.find_element(By.ID, "max_new_tokens").clear()
    browser.find_element(By.ID, "max_new_tokens").send_keys("20")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".column[data-state=done]"))
    columns = browser.find_elements(By.CSS_SELECTOR, ".column")
    assert [c.get_attribute("data-model") for c in columns] == ["sft/tiny"], "an unpicked model was sampled"
    assert INSTRUCTION_FORMAT in columns[0].find_element(By.CSS_SELECTOR, ".framing").text, "the page does not say the instruction format was used"
