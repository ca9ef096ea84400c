#!/usr/bin/env python
"""Check the Dagster UI as a user sees it.

Starts `dagster dev` (workspace.yaml) on 127.0.0.1 with a free port, a temporary DAGSTER_HOME (holding a copy of
pipelines/dagster_home/dagster.yaml) and a temporary MedLVR home (bundled sample data); waits for /server_info;
through the webserver's GraphQL API (launchRun) materialises one dataset partition of `corpus_dataset_job`, then
`corpus_publish_job` (the corpus card of that dataset), then a small evaluation of the tiny models on SLAKE
(`evaluation_predictions_job`, then `evaluation_report`; `EVAL_OVERRIDES`), polling each run until it succeeds;
checks through GraphQL what the asset pages hold (the qa_pairs checks passed, thumbnail grids linked as PNG files
on the corpus storage, contact sheets as JPEG data: URLs within their cap, the card and report Markdown within
theirs and without relative links); then in headless Chromium opens each Markdown entry the UI shows behind
"[Show Markdown]" (the contact sheets, the card, its sample images, the report's tables) and checks that it renders:
the images load (decoded, non-zero size), the card shows its headings and tables, the report its tables, no link
points at a file next to the document. Saves a screenshot of the asset graph and, with `--shots DIR`, of each
dialog; then stops the process group it started, and only that.

With `--dagster-home DIR` it checks an instance the main job made (after `make demo`: pipelines/dagster_home)
instead: the MedLVR home is DIR/medlvr, it launches only the run of the partition (one the main job ingested), and
checks the corpus card and evaluation report the main job materialised. The runs it launches are written to DIR.

    python scripts/ui_check.py [--out docs/dagster-asset-graph.png] [--partition busi] [--shots DIR]
                               [--dagster-home DIR]
Exit status 0 when everything worked.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--no-first-run"]
LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId status } } ... on PythonError { message }
  ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }"""
STATUS = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""
# What the asset pages show after the run: the qa_pairs checks' results and the metadata of a materialisation
CHECKS = """query($key: AssetKeyInput!) { assetNodes(assetKeys: [$key]) { assetChecksOrError {
  __typename ... on AssetChecks { checks { name executionForLatestMaterialization { status } } } } } }"""
METADATA = """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { __typename ... on Asset {
  assetMaterializations(limit: 1) { metadataEntries { __typename label
    ... on PathMetadataEntry { path } ... on MarkdownMetadataEntry { mdStr } } } } } }"""
QA_CHECKS = ("qa_pairs_schema", "qa_answer_among_options", "qa_boxes_inside_images")
MAX_MARKDOWN_CHARS = 16_000  # any other Markdown entry: tables of a few rows, never an embedded image
IMAGE_ENTRIES = {"normalized_images": "contact_sheet", "qa_pairs": "contact_sheet", "corpus_card": "sample_images"}
# a small evaluation: the sample config's three tiny models on 2 SLAKE samples, main runs and latent ablations
EVAL_OVERRIDES = ["limit=2", "fig3=null", "fig5=null", "efficiency=null", "benchmarks={slake: {}}"]
EVAL_RUN_CONFIG = {"resources": {"evaluation": {"config": {"overrides": EVAL_OVERRIDES}}}}


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(base: str, query: str, variables: dict) -> dict:
    req = urllib.request.Request(f"{base}/graphql", json.dumps({"query": query, "variables": variables}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.loads(r.read())
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    return body["data"]


def cdp_screenshot(chromium: str, url: str, out: Path, profile: Path, size=(1600, 1000), js: str = "",
                   settle: float = 8.0, reload: bool = False) -> None:
    """Screenshot through the DevTools protocol, after running `js` on the loaded page (to expand the collapsed
    asset groups or open a metadata dialog); returns what `js` returned (JSON values). Needs the `websockets`
    package (installed with dagster-webserver's uvicorn[standard])."""
    import base64

    from websockets.sync.client import connect

    port = free_port()
    cmd = [chromium, *CHROME_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
           f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", "about:blank"]
    browser = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as r:
                    ws_url = next(t["webSocketDebuggerUrl"] for t in json.loads(r.read()) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        with connect(ws_url, max_size=64 * 2**20) as ws:
            n = 0

            def call(method, **params):
                nonlocal n
                n += 1
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=60))
                    if msg.get("id") == n:
                        return msg.get("result", {})

            call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)
            call("Page.navigate", url=url)
            time.sleep(settle)
            value = None
            if js:
                res = call("Runtime.evaluate", expression=js, awaitPromise=True, returnByValue=True)
                value = res.get("result", {}).get("value")
                time.sleep(settle / 2)
            if reload:  # e.g. the expanded groups are remembered in localStorage; a reload fits the graph to view
                call("Page.reload")
                time.sleep(settle)
            png = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(png)
    finally:
        os.killpg(browser.pid, signal.SIGKILL)
        browser.wait()
    if out.stat().st_size < 10_000:
        raise RuntimeError(f"screenshot of {url} looks blank: {out}")
    return value


# Expand all asset groups of the lineage graph (the UI collapses them when there are several): its Alt+E shortcut.
EXPAND_GROUPS = """(async () => { for (const t of [document, window]) {
  t.dispatchEvent(new KeyboardEvent('keydown', {altKey: true, code: 'KeyE', key: 'e', bubbles: true}));
  await new Promise(r => setTimeout(r, 800));
  if (!document.querySelector('[class*="CollapsedGroupNode_collapsedGroupNodeBox"]')) break; } })()"""  # Alt+E


def check_asset_pages(base: str) -> str:
    """The qa_pairs checks passed; thumbnail grids are linked PNG files; the entries the UI renders inline are within
    their caps: contact sheets (JPEG data: URLs), the card and the report tables (Markdown, no relative link); no
    other entry embeds an image. Returns a summary."""
    import base64
    import re

    from medlvr.pipelines.corpus.metadata import CONTACT_SHEET_MAX_BYTES, MARKDOWN_MAX_CHARS

    nodes = graphql(base, CHECKS, {"key": {"path": ["qa_pairs"]}})["assetNodes"]
    checks = {c["name"]: (c["executionForLatestMaterialization"] or {}).get("status")
              for c in nodes[0]["assetChecksOrError"]["checks"]}
    if any(checks.get(name) != "SUCCEEDED" for name in QA_CHECKS):
        raise RuntimeError(f"qa_pairs checks did not all succeed: {checks}")
    sizes = {}
    for key in ("normalized_images", "qa_pairs", "corpus_card", "evaluation_report"):
        asset = graphql(base, METADATA, {"key": {"path": [key]}})["assetOrError"]
        entries = {e["label"]: e for e in asset["assetMaterializations"][0]["metadataEntries"]}
        if key in ("normalized_images", "qa_pairs"):
            thumbs = entries.get("thumbnails", {})
            if thumbs.get("__typename") != "PathMetadataEntry" or not Path(thumbs["path"]).read_bytes().startswith(
                    b"\x89PNG"):
                raise RuntimeError(f"{key}: thumbnails is not a linked PNG file: {thumbs}")
        for label, e in entries.items():
            md = e.get("mdStr") or ""
            if label == IMAGE_ENTRIES.get(key):
                m = re.fullmatch(r"!\[[^\]]*\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", md)
                if not m or len(base64.b64decode(m.group(1))) > CONTACT_SHEET_MAX_BYTES:
                    raise RuntimeError(f"{key}: {label} is not a JPEG data: URL of at most {CONTACT_SHEET_MAX_BYTES} "
                                       f"bytes: {md[:80]!r} ({len(md)} chars)")
                sizes[f"{key}.{label}"] = len(base64.b64decode(m.group(1)))
            elif (key, label) in (("corpus_card", "card"), ("evaluation_report", "tables")):
                if len(md) > MARKDOWN_MAX_CHARS or re.search(r"\]\((?!https?:|mailto:|data:|#)[^)]*\)", md):
                    raise RuntimeError(f"{key}: {label} is {len(md)} chars or has a relative link")
                sizes[f"{key}.{label}"] = len(md)
            elif "data:image" in md or len(md) > MAX_MARKDOWN_CHARS:
                raise RuntimeError(f"{key}: metadata entry {label} embeds an image or is {len(md)} chars")
        for label in [IMAGE_ENTRIES.get(key), {"corpus_card": "card", "evaluation_report": "tables"}.get(key)]:
            if label and label not in entries:
                raise RuntimeError(f"{key}: no metadata entry {label!r} (has {sorted(entries)})")
    return (f"qa_pairs checks {sorted(checks)} succeeded; thumbnails linked ({thumbs['path']}); inline entries "
            f"within their caps: {sizes}")


# Open a metadata entry's "[Show Markdown]" dialog on an asset page and report what it rendered.
SHOW_MARKDOWN = """(async (label) => {
  const wait = ms => new Promise(r => setTimeout(r, ms));
  let td;
  for (let i = 0; i < 60 && !td; i++) {
    td = Array.from(document.querySelectorAll("td")).find(e => e.textContent.trim() === label);
    if (!td) await wait(500);
  }
  if (!td) return {error: "no metadata row " + label};
  const a = Array.from(td.closest("tr").querySelectorAll("a")).find(e => e.textContent.trim() === "[Show Markdown]");
  if (!a) return {error: "no [Show Markdown] in the row " + label};
  a.click();
  let d;
  for (let i = 0; i < 40 && !d; i++) { d = document.querySelector("[role=dialog]"); if (!d) await wait(500); }
  if (!d) return {error: "no dialog for " + label};
  await wait(2500);
  const imgs = Array.from(d.querySelectorAll("img"));
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return {images: imgs.map(i => ({src: i.src.slice(0, 23), width: i.naturalWidth, height: i.naturalHeight})),
          headings: Array.from(d.querySelectorAll("h1,h2,h3")).map(h => h.textContent.trim()),
          tables: d.querySelectorAll("table").length,
          header_cells: Array.from(d.querySelectorAll("th")).map(t => t.textContent.trim()),
          hrefs: Array.from(d.querySelectorAll("a[href]")).map(x => x.getAttribute("href"))};
})(LABEL)"""


def _rendered_ok(asset: str, label: str, got: dict) -> str | None:
    """What is wrong with a rendered dialog (None: nothing)."""
    if got.get("error"):
        return got["error"]
    relative = [h for h in got["hrefs"] if not h.startswith(("http:", "https:", "mailto:", "#"))]
    if relative:
        return f"links that lead nowhere: {relative}"
    if label in ("contact_sheet", "sample_images"):
        ok = [i for i in got["images"] if i["src"].startswith("data:image/jpeg") and i["width"] > 0 and i["height"] > 0]
        return None if ok else f"the image did not load: {got['images']}"
    if label == "card":
        if not any(h.startswith("MedLVR grounding corpus") for h in got["headings"]) or "Format" not in got["headings"] \
                or got["tables"] < 1:
            return f"the card did not render its headings and tables: {got}"
    if label == "tables" and (got["tables"] < 2 or "accuracy %" not in got["header_cells"]
                              or "Latent ablation" not in got["headings"]):
        return f"the report tables did not render: {got}"
    return None


def check_rendered(chromium: str, base: str, partition: str, profile: Path, shots: Path | None) -> str:
    """Every entry the UI shows behind "[Show Markdown]" renders in the browser (`SHOW_MARKDOWN`, `_rendered_ok`)."""
    done = []
    for asset, label, query in (("normalized_images", "contact_sheet", f"?partition={partition}"),
                                ("qa_pairs", "contact_sheet", f"?partition={partition}"),
                                ("corpus_card", "card", ""), ("corpus_card", "sample_images", ""),
                                ("evaluation_report", "tables", "")):
        out = (shots or profile.parent) / f"{asset}-{label}.png"
        got = cdp_screenshot(chromium, f"{base}/assets/{asset}{query}", out, profile, size=(1600, 1000),
                             js=SHOW_MARKDOWN.replace("LABEL", json.dumps(label)), settle=6.0)
        problem = _rendered_ok(asset, label, got or {})
        if problem:
            raise RuntimeError(f"{asset}: {label} does not render in the UI: {problem}")
        done.append(f"{asset}.{label}")
    return f"rendered in the UI: {', '.join(done)}"


def start_dagster(port: int, home: Path, log) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEDLVR_HOME": str(home / "medlvr"),
           "DAGSTER_DISABLE_TELEMETRY": "1"}
    env.pop("MEDLVR_DATA_ROOT", None)
    dagster = str(Path(sys.executable).with_name("dagster"))
    # Own session/process group; SIGINT reset to default (a background shell may have set it to ignore, and
    # dagster copies that disposition onto SIGTERM), so the group stops cleanly on SIGINT.
    wrapper = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "os.execv(sys.argv[1], sys.argv[1:])")
    cmd = [sys.executable, "-c", wrapper, dagster, "dev", "-w", str(ROOT / "workspace.yaml"),
           "-h", "127.0.0.1", "-p", str(port)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the process group this script started (dagster dev, its webserver, daemon and code server)."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)  # anyone left in the group?
            except ProcessLookupError:
                proc.poll()
                return
            proc.poll()
            time.sleep(0.5)


def wait_server(base: str, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/server_info", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(1)
    raise TimeoutError("dagster webserver did not answer /server_info")


def run_job(base: str, job: str, timeout: float, partition: str | None = None, run_config: dict | None = None,
            assets: list[str] | None = None) -> str:
    """Launch `job` (one partition; only `assets`, without their checks, when given) and wait for its success."""
    selector = {"repositoryLocationName": "medlvr", "repositoryName": "__repository__", "jobName": job}
    if assets:
        selector |= {"assetSelection": [{"path": [a]} for a in assets], "assetCheckSelection": []}
    params = {"selector": selector, "runConfigData": run_config or {},
              "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}] if partition else []}}
    deadline = time.time() + timeout
    while True:  # the code location may still be loading right after /server_info answers
        res = graphql(base, LAUNCH, {"p": params})["launchRun"]
        if res["__typename"] == "LaunchRunSuccess" or time.time() > deadline:
            break
        time.sleep(2)
    if res["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launchRun {job} failed: {res}")
    run_id = res["run"]["runId"]
    while time.time() < deadline:
        status = graphql(base, STATUS, {"id": run_id})["runOrError"].get("status")
        if status == "SUCCESS":
            return run_id
        if status in ("FAILURE", "CANCELED"):
            raise RuntimeError(f"run {run_id} of {job} ended {status}")
        time.sleep(2)
    raise TimeoutError(f"run {run_id} of {job} did not finish in {timeout}s")


def run_partition(base: str, partition: str, timeout: float) -> str:
    return run_job(base, "corpus_dataset_job", timeout, partition)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "dagster-asset-graph.png")
    ap.add_argument("--asset-out", type=Path, default=None,
                    help="also screenshot the partition's normalized_images page (metadata with thumbnails)")
    ap.add_argument("--partition", default="busi")
    ap.add_argument("--chromium", default=None)
    ap.add_argument("--shots", type=Path, default=None, help="save a screenshot of each rendered dialog here")
    ap.add_argument("--timeout", type=float, default=240, help="seconds for the server, and for each run")
    ap.add_argument("--dagster-home", type=Path, default=None,
                    help="an instance the main job made (pipelines/dagster_home after `make demo`): launch only the "
                         "partition's run and check the main job's card and report (default: a temporary instance "
                         "where the card and a small evaluation are materialised too)")
    args = ap.parse_args(argv)
    chromium = args.chromium or find_chromium()
    if not chromium:
        print("chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    if args.dagster_home and not (args.dagster_home / "medlvr" / "corpus").is_dir():
        print(f"{args.dagster_home} holds no main job's outputs (no medlvr/corpus/): run `medlvr demo` into it first",
              file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="medlvr-ui-"))
    if args.dagster_home:
        home = args.dagster_home.resolve()
    else:
        home = tmp / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "pipelines" / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp / "dagster-dev.log"
    t0 = time.time()
    with open(log_path, "wb") as log:
        proc = start_dagster(port, home, log)
        try:
            info = wait_server(base, proc, args.timeout)
            print(f"webserver {info.get('dagster_webserver_version')} on {base} after {time.time() - t0:.1f}s")
            run_id = run_partition(base, args.partition, args.timeout)
            print(f"run {run_id} ({args.partition}) succeeded after {time.time() - t0:.1f}s")
            more_runs = [] if args.dagster_home else [  # a main job's home holds the card and report already
                ("corpus_publish_job", None, None, None),
                ("evaluation_predictions_job", "slake", EVAL_RUN_CONFIG, None),
                ("evaluation_report_job", None, EVAL_RUN_CONFIG, ["evaluation_report"])]
            for job, part, conf, assets in more_runs:
                # (the report's parse-failure check judges trained models only: none in this tiny evaluation)
                run_id = run_job(base, job, args.timeout, part, conf, assets)
                print(f"run {run_id} ({job}) succeeded after {time.time() - t0:.1f}s")
            print(check_asset_pages(base))
            graphql(base, "mutation { setNuxSeen }", {})  # no first-visit "join the community" dialog
            cdp_screenshot(chromium, f"{base}/asset-groups", args.out, tmp / "chrome-profile", size=(1800, 1000),
                           js=EXPAND_GROUPS, reload=True)
            print(f"asset graph screenshot: {args.out}")
            print(check_rendered(chromium, base, args.partition, tmp / "chrome-profile", args.shots))
            if args.asset_out:
                cdp_screenshot(chromium, f"{base}/assets/normalized_images?partition={args.partition}",
                               args.asset_out, tmp / "chrome-profile", size=(1600, 1000))
                print(f"asset page screenshot: {args.asset_out}")
        except Exception as e:
            print(f"UI check failed: {e}\n--- dagster dev log (tail) ---", file=sys.stderr)
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
            return 1
        finally:
            stop_group(proc)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"stopped dagster dev; total {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
