#!/usr/bin/env python3
"""The dashboard in a real headless Chromium (Debian chromium + chromium-driver,
driven by Selenium) against a real daemon training tiny jobs:
  - without the token the page is the login form (401) and the API answers 401;
  - logging in with the token (the login form: an HttpOnly cookie) shows the queue
    with the sweep's jobs;
  - a running job's loss chart gains points while it runs (live Server-Sent
    Events), and its page shows its hyperparameters;
  - a second, queued job is cancelled from its page (the button, twice) and its
    state turns to cancelled there and in the API;
  - after the sweep: the job page shows previews per prompt and step and a LoRA
    download link, the sweep page a sortable morning table, one curve per job and
    the jobs-by-prompts grid; ".." in a download path is refused;
  - at a phone's width (390 px) the job page has no horizontal overflow.
Screenshots of the job page, the sweep page and the phone view go to
--artifacts; --docs-screenshot also copies the job page to that path (the
README's docs/dashboard-job.png).

Exit 77 (ctest: skipped) when Selenium, chromium or chromedriver is missing,
unless LORAD_REQUIRE_PYTHON_TESTS=1.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        raise ImportError(f"{CHROMIUM} or {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)")
except ImportError as e:
    print(f"browser_test.py: {e}; install tests/python-requirements.txt into {sys.executable} and Debian's "
          "chromium + chromium-driver (deploy/install-deps.sh, deploy/test.sh)", file=sys.stderr)
    sys.exit(1 if os.environ.get("LORAD_REQUIRE_PYTHON_TESTS") == "1" else 77)

import lorad_daemon  # noqa: E402

SWEEP_STEPS = 120


def wait_for(what, predicate, timeout=180, interval=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # the page is redrawing: try again
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def state_of(driver):
    badges = driver.find_elements(By.CSS_SELECTOR, "#job-head .state")
    return badges[0].get_attribute("data-state") if badges else None


def chart_points(driver):
    svgs = driver.find_elements(By.CSS_SELECTOR, "#loss-chart svg")
    return int(svgs[0].get_attribute("data-points") or 0) if svgs else 0


def full_page_screenshot(driver, path, width):
    for _ in range(2):  # the second pass measures the page as laid out at the new size
        height = driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)")
        driver.set_window_size(width, max(600, min(height + 120, 6000)))
        time.sleep(0.5)  # the charts redraw at the new width
    driver.save_screenshot(path)
    print(f"browser_test: screenshot {path}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build-dir", required=True)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--docs-screenshot", default="")
    args = parser.parse_args()
    os.makedirs(args.artifacts, exist_ok=True)
    daemon = lorad_daemon.Daemon(args.build_dir)
    driver = None
    try:
        folder = tempfile.mkdtemp(prefix="lorad-web-dataset-", dir=daemon.root)
        lorad_daemon.make_dataset(folder, 4, prompts=["a shape, circle --w 64 --h 64 --s 2 --d 1",
                                                      "a red circle on blue --w 64 --h 64 --s 2 --d 2"])
        dataset = daemon.loractl("datasets", "upload", folder, "--name", "shapes")
        sweep_file = os.path.join(daemon.root, "dash.toml")
        with open(sweep_file, "w") as f:
            f.write(lorad_daemon.tiny_config(SWEEP_STEPS, SWEEP_STEPS // 2,
                                             'sample_every_n_steps = 40\nsample_prompts = "prompts.txt"\n'))
            f.write(f'dataset = "{dataset}"\n[sweep]\nlearning_rate = [1e-3, 5e-4]\n')
        daemon.loractl("sweep", sweep_file, "--name", "dash")
        sweep_jobs = sorted((j for j in daemon.api("/api/jobs?sweep=dash")["jobs"]), key=lambda j: int(j["id"]))
        assert len(sweep_jobs) == 2, sweep_jobs
        first = sweep_jobs[0]["id"]
        long_config = os.path.join(daemon.root, "long.toml")
        with open(long_config, "w") as f:
            f.write(lorad_daemon.tiny_config(100000))
        queued = daemon.loractl("submit", long_config, "--dataset", dataset, "--name", "long-run")

        options = Options()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--hide-scrollbars", "--force-device-scale-factor=1"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(60)

        # Without the token: the login form (the page answered 401), nothing of the jobs.
        assert daemon.request("/api/jobs", token=None)[0] == 401
        assert daemon.request("/", token=None)[0] == 401
        driver.get(daemon.url + "/")
        assert driver.find_elements(By.ID, "token"), driver.page_source[:500]
        assert "long-run" not in driver.page_source
        driver.find_element(By.ID, "token").send_keys(lorad_daemon.TOKEN)
        driver.find_element(By.ID, "login").click()
        wait_for("the queue with the sweep's jobs",
                 lambda: len(driver.find_elements(By.CSS_SELECTOR, "#jobs-table tr[data-job]")) >= 3)
        names = driver.find_element(By.ID, "jobs-table").text
        assert "dash/" in names and "long-run" in names, names
        cookies = {c["name"]: c for c in driver.get_cookies()}
        assert cookies["lorad_token"]["httpOnly"], cookies

        # The first sweep job's page while it runs: its loss chart gains points.
        driver.find_element(By.CSS_SELECTOR, f'tr[data-job="{first}"] a.job-link').click()
        wait_for("job page", lambda: state_of(driver) is not None)
        running_points = wait_for("loss points while running",
                                  lambda: state_of(driver) == "running" and chart_points(driver) > 0
                                  and chart_points(driver) < SWEEP_STEPS and chart_points(driver))
        more = wait_for("more loss points", lambda: chart_points(driver) > running_points and chart_points(driver))
        print(f"browser_test: loss chart {running_points} -> {more} points while job {first} ran")
        assert "learning_rate" in driver.find_element(By.ID, "hyperparameters").get_attribute("textContent")

        # Cancel the queued job from its page: the button asks twice.
        driver.get(f"{daemon.url}/jobs/{queued}")
        wait_for("queued job page", lambda: state_of(driver) == "queued")
        driver.find_element(By.ID, "cancel").click()
        wait_for("confirmation", lambda: "again" in driver.find_element(By.ID, "cancel").text)
        driver.find_element(By.ID, "cancel").click()
        wait_for("cancelled on the page", lambda: state_of(driver) == "cancelled", timeout=60)
        assert daemon.api(f"/api/jobs/{queued}")["job"]["state"] == "JOB_STATE_CANCELLED"

        for job in sweep_jobs:
            done = daemon.wait_job(job["id"], {"succeeded", "failed", "cancelled"})
            assert done["state"] == "JOB_STATE_SUCCEEDED", done

        # The finished job: previews per prompt and step, downloads, findings.
        driver.get(f"{daemon.url}/jobs/{first}")
        wait_for("all points", lambda: chart_points(driver) == SWEEP_STEPS, timeout=60)
        wait_for("previews", lambda: driver.execute_script(
            "const i = [...document.querySelectorAll('#previews img.preview')];"
            "return i.length >= 6 && i.every((x) => x.complete && x.naturalWidth > 0);"), timeout=60)
        links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#downloads a.download")]
        # The step-60 LoRA and the final one (the sweep names it tiny_<job name>.safetensors).
        assert len(links) == 2 and all(h.endswith(".safetensors") for h in links), links
        assert any("step" not in h.rsplit("/", 1)[1] for h in links), links
        status, _, body = daemon.request(links[-1].replace(daemon.url, ""))
        assert status == 200 and len(body) > 1000, (status, len(body))
        assert daemon.request(f"/api/jobs/{first}/files/../../lorad.db")[0] == 404
        job_png = os.path.join(args.artifacts, "job-page.png")
        full_page_screenshot(driver, job_png, 1280)

        # The sweep page: sortable table, one curve per job, the sample grid.
        driver.set_window_size(1280, 1000)
        driver.get(f"{daemon.url}/sweeps/dash")
        wait_for("sweep table", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#sweep-table tbody tr")) == 2)
        wait_for("grid images", lambda: driver.execute_script(
            "const i = [...document.querySelectorAll('#sample-grid img')];"
            "return i.length == 4 && i.every((x) => x.complete && x.naturalWidth > 0);"), timeout=60)
        curves = driver.find_elements(By.CSS_SELECTOR, "#sweep-chart svg path")
        assert len(curves) == 2, len(curves)

        def first_column():
            return [r.find_elements(By.TAG_NAME, "td")[0].text
                    for r in driver.find_elements(By.CSS_SELECTOR, "#sweep-table tbody tr")]
        header = driver.find_elements(By.CSS_SELECTOR, "#sweep-table th")[0]
        header.click()
        ascending = first_column()
        driver.find_elements(By.CSS_SELECTOR, "#sweep-table th")[0].click()
        assert first_column() == list(reversed(ascending)), (ascending, first_column())
        full_page_screenshot(driver, os.path.join(args.artifacts, "sweep-page.png"), 1280)

        # A phone: no sideways scrolling of the page itself (tables scroll in their boxes).
        driver.set_window_size(390, 844)
        driver.get(f"{daemon.url}/jobs/{first}")
        wait_for("phone job page", lambda: chart_points(driver) == SWEEP_STEPS, timeout=60)
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the job page is {overflow}px wider than a phone"
        driver.save_screenshot(os.path.join(args.artifacts, "job-page-phone.png"))

        if args.docs_screenshot:
            shutil.copyfile(job_png, args.docs_screenshot)
            print(f"browser_test: copied the job page to {args.docs_screenshot}")
        print("browser_test: passed")
    except Exception:
        if driver is not None:
            driver.save_screenshot(os.path.join(args.artifacts, "failure.png"))
            with open(os.path.join(args.artifacts, "failure.html"), "w") as f:
                f.write(driver.page_source)
        print(f"lorad's log:\n{daemon.stderr()}", file=sys.stderr)
        raise
    finally:
        if driver is not None:
            driver.quit()
        daemon.stop()


if __name__ == "__main__":
    main()
