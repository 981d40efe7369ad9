"""MASB as partners and units get it: a wheel, installed (not editable) into a new virtual environment,
used from a folder that has nothing to do with the source checkout."""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.tansu  # the demo runs on the embedded broker shipped in the wheel's dependencies


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv holding only the wheel built from this checkout (and its dependencies)."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(dist)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("masb-*.whl"))
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", str(wheel)], check=True, capture_output=True, timeout=900)
    return env_dir / "bin"


def masb(bin_dir: Path, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASB_", "PYTHON"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["masb", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_the_installed_package_does_not_import_from_the_checkout(installed, tmp_path):
    out = subprocess.run([str(installed / "python"), "-c", "import streams, agents, deploy; "
                          "print(streams.__file__, agents.__file__, deploy.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in out and "site-packages" in out


def test_keys_policy_and_schemas_commands_work_from_any_folder(installed, tmp_path):
    result = masb(installed, "keys", "generate", "--owner", "hau-test", "--out", "keys", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len([json.loads(line) for line in result.stdout.splitlines()]) == 2
    result = masb(installed, "schemas", "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    # Registering edits a registry: never the installed package's own (a reinstall would undo it).
    shipped = result.stdout.split()[1].rstrip(":")
    result = masb(installed, "schemas", "register", cwd=tmp_path)
    assert result.returncode == 2 and "needs --root" in result.stderr and "Traceback" not in result.stderr
    shutil.copytree(shipped, tmp_path / "my-schemas")
    result = masb(installed, "schemas", "register", "--root", "my-schemas", cwd=tmp_path)
    assert result.returncode == 0 and json.loads(result.stdout) == {"registered": []}, result.stderr
    template = (ROOT / "tests" / "fixtures" / "policy" / "valid.yaml").read_text()
    (tmp_path / "policy.yaml").write_text(template)
    result = masb(installed, "policy", "check", "policy.yaml", cwd=tmp_path)
    assert result.returncode == 0 and ": OK" in result.stdout, result.stderr
    result = masb(installed, "policy", "explain", "policy.yaml", "MARAC_REFERRAL", "worcestershire", cwd=tmp_path)
    assert result.returncode == 0 and "council-housing" in result.stdout, result.stderr


def test_the_demo_runs_from_an_empty_folder(installed, tmp_path):
    result = masb(installed, "demo", cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo completed" in result.stdout and "verified intact" in result.stdout
    assert "Traceback" not in result.stderr
    assert (tmp_path / ".masb-demo" / "policy.yaml").exists()


def test_the_html_report_finds_its_stylesheet_and_script_in_the_wheel(installed, tmp_path):
    code = ("from streams.audit.report import Filters, build_report, render_html; "
            "page = render_html(build_report([], Filters())); "
            "print('Log not verified' in page, 'MASB exchange report: filter and sort' in page, '@page' in page)")
    out = subprocess.run([str(installed / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["True", "True", "True"], out.stderr[-2000:]
