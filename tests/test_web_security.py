"""Issue 17: the labelling server under attack: DNS rebinding, cross-site requests, odd ids, bad options, tokens.

Each case drives the real FastAPI app (its test client, with the Host, Origin and content type a browser or an
attacker would send) or the real CLI, and asserts the answer and that the store kept exactly what it held.
"""

from __future__ import annotations

import importlib
import math
import os
import stat
import sys

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from activepose.cli import app as cli_app
from activepose.config import MAX_LEASE_SECONDS, AnnotateOptions
from activepose.errors import ConfigError
from activepose.pose.coco import load_coco
from activepose.project.schema import StoreError
from activepose.project.store import Project
from activepose.web.server import allowed_hosts, create_app
from activepose.workflow.desk import LabellingDesk

from .conftest import project_with_round, synthetic_project_data

ROUND = [3, 4, 5]
K = 14
JSON = {"content-type": "application/json"}
runner = CliRunner()
app_module = importlib.import_module(
    "activepose.commands.app"
)  # the module (the package exports the Typer app)


@pytest.fixture
def proj(tmp_path):
    root, gt_path = synthetic_project_data(tmp_path / "data", num_images=8, n_initial=0, n_test=0)
    project_with_round(tmp_path / "proj", load_coco(gt_path), ROUND).close()
    return tmp_path / "proj"


def client(proj, hosts=allowed_hosts("127.0.0.1"), base="http://127.0.0.1:8000", token=None):
    desk = LabellingDesk(proj, AnnotateOptions(predictions=False, device="cpu"))
    return TestClient(create_app(desk, token, hosts), base_url=base)


def dump(proj) -> str:
    with Project.open(proj, readonly=True) as p:
        return p.dump()


def save_body(x=10.0) -> dict:
    return {"revision": 0, "people": [{"keypoints": [[x + j, 10.0 + j, 2] for j in range(K)]}]}


# --- DNS rebinding: the Host header -----------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", "",
                                  "localhost.", "[::1", "evil.example@127.0.0.1", "127.0.0.1:abc",
                                  "127.0.0.1/x"])  # fmt: skip
def test_a_foreign_host_is_refused_on_every_route(proj, host):
    c = client(proj)
    before = dump(proj)
    headers = {"host": host}
    for method, path, body in [
        ("GET", "/", None),
        ("GET", "/api/round", None),
        ("GET", f"/api/images/{ROUND[0]}", None),
        ("GET", f"/api/images/{ROUND[0]}/file", None),
        ("POST", f"/api/images/{ROUND[0]}/labels", save_body()),
        ("POST", f"/api/images/{ROUND[0]}/lease", None),
    ]:
        res = c.request(method, path, json=body, headers={**JSON, **headers})
        assert res.status_code == 400 and "is not this server" in res.json()["detail"], (
            method,
            path,
            res.text,
        )
    assert dump(proj) == before  # not even a lease was taken


@pytest.mark.parametrize("base", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000",
                                  "http://LOCALHOST"])  # fmt: skip
def test_loopback_names_are_served(proj, base):
    assert client(proj, base=base).get("/api/round").status_code == 200


def test_allow_host_and_a_wildcard_listen_address(proj):
    hosts = allowed_hosts("0.0.0.0", ["labels.lab.example"])
    assert {"localhost", "127.0.0.1", "::1", "0.0.0.0", "labels.lab.example"} <= hosts
    assert client(proj, hosts, base="http://labels.lab.example:8000").get("/api/round").status_code == 200
    assert (
        client(proj, allowed_hosts("127.0.0.1"), base="http://labels.lab.example").get("/").status_code == 400
    )


# --- cross-site requests -----------------------------------------------------------------------------------------
def test_a_cross_site_simple_lease_request_takes_nothing(proj):
    """The issue's case: `POST /api/images/N/lease` with no body from another site took the image for 10 min."""
    c = client(proj)
    before = dump(proj)
    res = c.post(f"/api/images/{ROUND[0]}/lease", headers={"origin": "http://evil.example"})
    assert res.status_code == 403 and "cross-origin" in res.json()["detail"]
    res = c.post(f"/api/images/{ROUND[0]}/lease")  # no Origin (an old browser), no JSON content type
    assert res.status_code == 415 and "application/json" in res.json()["detail"]
    res = c.post(f"/api/images/{ROUND[0]}/lease", headers={"content-type": "text/plain"})
    assert res.status_code == 415
    res = c.delete(
        f"/api/images/{ROUND[0]}/lease", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert res.status_code == 415
    assert dump(proj) == before
    # the page's own request: JSON, same origin
    res = c.post(f"/api/images/{ROUND[0]}/lease", headers={**JSON, "origin": "http://127.0.0.1:8000"})
    assert res.status_code == 200 and res.json()["lease"]["annotator"] == "anonymous"


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"content-type": "text/plain"}, 415),  # a form or fetch without preflight, whatever FastAPI accepts
        ({}, 415),  # no content type at all
        ({**JSON, "origin": "http://evil.example"}, 403),
        ({**JSON, "origin": "null"}, 403),  # sandboxed frames, file:// pages
        ({**JSON, "origin": "http://127.0.0.1:9999"}, 403),  # another port is another origin
        ({**JSON, "sec-fetch-site": "cross-site"}, 403),
        ({**JSON, "sec-fetch-site": "same-site"}, 403),
    ],
)
def test_state_changes_need_json_from_the_same_origin(proj, headers, status):
    import json

    c = client(proj)
    before = dump(proj)
    res = c.post(f"/api/images/{ROUND[0]}/labels", content=json.dumps(save_body()).encode(), headers=headers)
    assert res.status_code == status, res.text
    assert dump(proj) == before
    ok = c.post(f"/api/images/{ROUND[0]}/labels", json=save_body(),
                headers={"origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"})  # fmt: skip
    assert ok.status_code == 200 and ok.json()["state"] == "labelled"


def test_a_cross_origin_read_is_refused(proj):
    c = client(proj)
    assert c.get("/api/round", headers={"origin": "http://evil.example"}).status_code == 403
    assert c.get("/api/round", headers={"origin": "http://127.0.0.1:8000"}).status_code == 200


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_cross_site_get_takes_no_lease(proj, site):
    """Opening an image leases it: an <img> or no-cors fetch from another site (no Origin on a GET) must not."""
    c = client(proj)
    before = dump(proj)
    for path in (f"/api/images/{ROUND[0]}", f"/api/images/{ROUND[0]}/file", "/api/round"):
        res = c.get(path, headers={"sec-fetch-site": site, "sec-fetch-mode": "no-cors"})
        assert res.status_code == 403 and "Sec-Fetch-Site" in res.json()["detail"], path
    assert dump(proj) == before
    # a link from another site to the page itself still opens it; the page's own requests are same-origin
    assert c.get("/", headers={"sec-fetch-site": site, "sec-fetch-mode": "navigate"}).status_code == 200
    res = c.get(f"/api/images/{ROUND[0]}", headers={"sec-fetch-site": "same-origin"})
    assert res.status_code == 200 and res.json()["lease"]["annotator"] == "anonymous"


def test_behind_a_proxy_the_allowed_name_is_a_valid_origin(proj):
    """nginx's default passes its upstream's name as Host: the page's Origin is the proxy's name instead."""
    desk = LabellingDesk(proj, AnnotateOptions(predictions=False, device="cpu"))
    hosts = allowed_hosts("127.0.0.1", ["labels.lab.example"])
    c = TestClient(create_app(desk, None, hosts, ["labels.lab.example"]), base_url="http://127.0.0.1:8000")
    page = {"origin": "https://labels.lab.example", "sec-fetch-site": "same-origin"}
    assert c.post(f"/api/images/{ROUND[0]}/labels", json=save_body(), headers=page).status_code == 200
    other = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
    assert c.post(f"/api/images/{ROUND[1]}/labels", json=save_body(), headers=other).status_code == 403


# --- image ids ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["+3", "%203", "3.0", "0x3", "3e0", "-3", "1" * 16])
def test_only_digits_are_image_ids(proj, raw):
    c = client(proj)
    before = dump(proj)
    assert c.get(f"/api/images/{raw}").status_code == 422
    assert c.post(f"/api/images/{raw}/labels", json=save_body()).status_code == 422
    assert c.get("/api/images/3").status_code == 200  # the real id (it takes the lease)
    assert dump(proj).count('INSERT INTO "labels"') == before.count('INSERT INTO "labels"')


# --- leases: bad lengths, and a bad row an earlier run left ---------------------------------------------------
@pytest.mark.parametrize("seconds", [math.nan, math.inf, -1.0, 0.0, MAX_LEASE_SECONDS + 1])
def test_a_lease_length_must_be_finite_and_at_most_a_day(proj, seconds):
    with pytest.raises(ConfigError, match="lease"):
        AnnotateOptions(lease_seconds=seconds)
    with Project.open(proj) as p, pytest.raises(StoreError, match="lease"):
        p.take_lease(ROUND[0], "ann", seconds)
    assert dump(proj).count('INSERT INTO "leases"') == 0


def test_an_infinite_lease_left_in_the_store_breaks_nothing(proj):
    import sqlite3

    with sqlite3.connect(proj / "project.db") as conn:  # what `--lease-minutes inf` stored before the fix
        conn.execute("INSERT INTO leases VALUES (?, 'ghost', ?)", (ROUND[0], math.inf))
    c = client(proj)
    h = {"X-Annotator": "ann"}
    r = c.get("/api/round", headers=h)
    assert r.status_code == 200 and all(i["lease"] is None for i in r.json()["images"])
    img = c.get(f"/api/images/{ROUND[0]}", headers=h)
    assert img.status_code == 200 and img.json()["lease"]["annotator"] == "ann"  # taken over
    assert c.post(f"/api/images/{ROUND[0]}/labels", json=save_body(), headers=h).status_code == 200


# --- the CLI's numeric options and the token -----------------------------------------------------------------
def refused(args, *needles):
    res = runner.invoke(cli_app, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
    message = " ".join(res.output.split())
    assert message.count("error:") == 1 and all(n in message for n in needles), res.output
    return message


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--lease-minutes", "nan"], "--lease-minutes nan"),
        (["--lease-minutes", "inf"], "at most 1440 minutes"),
        (["--lease-minutes", "0"], "more than 0"),
        (["--lease-minutes", "1441"], "at most 1440"),
        (["--port", "70000"], "1 to 65535"),
        (["--port", "-1"], "1 to 65535"),
        (["--port", "0"], "1 to 65535"),
        (["--host", "0.0.0.0"], "pass --token"),
        (["--host", "0.0.0.0", "--token", "a"], "at least 16 characters"),
        (["--token", "with space"], "letters, digits"),
    ],
)
def test_annotate_refuses_bad_options_before_any_work(proj, extra, needle):
    before = dump(proj)
    refused(["annotate", proj, "--no-predictions", *extra], needle)
    assert dump(proj) == before
    assert not (proj / "exports" / "round_1").exists()


def test_run_oracle_web_checks_the_same_options(proj):
    refused(["run", proj, "--rounds", 1, "--budget", 1, "--oracle", "web", "--port", 70000], "1 to 65535")
    refused(["run", proj, "--rounds", 1, "--budget", 1, "--oracle", "web", "--host", "0.0.0.0", "--token", "short"],
            "at least 16")  # fmt: skip


def test_the_token_from_the_environment_or_a_file(proj, tmp_path, monkeypatch):
    from activepose.commands.annotate import server_token

    monkeypatch.setenv("ACTIVEPOSE_TOKEN", "x")
    refused(
        ["annotate", proj, "--host", "0.0.0.0"], "at least 16 characters (it has 1)"
    )  # the env var is read
    monkeypatch.delenv("ACTIVEPOSE_TOKEN")
    secret = tmp_path / "token"
    secret.write_text("s3cret-token-from-a-file\n")
    assert server_token(None, secret) == "s3cret-token-from-a-file"
    with pytest.raises(ConfigError, match="not both"):
        server_token("abc", secret)
    (tmp_path / "empty").write_text("")
    refused(["annotate", proj, "--token-file", tmp_path / "empty"], "the file is empty")
    refused(["annotate", proj, "--token-file", tmp_path / "missing"], "cannot read it")


def test_crash_logs_are_private_and_hold_no_token(tmp_path, monkeypatch):
    token = "tok-" + "z" * 20
    monkeypatch.setattr(sys, "argv", ["activepose", "annotate", "P", "--token", token, f"--token={token}x"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    app_module.remember_secret("file-token-" + "q" * 16)  # as --token-file does
    exit_ = app_module._bug(RuntimeError(f"boom http://127.0.0.1:8000/?token={token} file-token-{'q' * 16}"))
    assert exit_.exit_code == 1
    (log,) = (tmp_path / "cache" / "activepose" / "logs").iterdir()
    text = log.read_text()
    assert token not in text and "--token ***" in text and "--token=***" in text and "boom" in text
    assert "file-token-" not in text
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    # no cache folder possible: a private folder under the temporary directory, never a file in /tmp itself
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    os.mkdir(tmp_path / "tmp")
    app_module._bug(RuntimeError("boom"))
    (folder,) = (tmp_path / "tmp").iterdir()
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    (log,) = folder.iterdir()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
