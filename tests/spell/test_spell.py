"""The conjure-up spell: metadata valid for conjure-up, names true to our charm, scripts right.

Each phase script runs against recording stand-ins of juju, lxc, openstack and modinfo on PATH
and must issue exactly the expected commands, and fail clearly when juju answers an error.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import schema

ROOT = Path(__file__).resolve().parents[2]
SPELL = ROOT / "spell" / "container-compute-novalxd"
STEPS = sorted(p for p in (SPELL / "steps").iterdir() if p.is_dir())
SCRIPTS = sorted(p for step in STEPS for p in step.iterdir() if p.name in schema.PHASES)
STANDIN = Path(__file__).with_name("standin.py")
OUR_APP = "worker"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# -- metadata -------------------------------------------------------------------------------


def test_spell_metadata_is_what_conjure_up_reads() -> None:
    assert schema.spell_problems(load(SPELL / "metadata.yaml")) == []
    assert (SPELL / "bundle.yaml").is_file()


@pytest.mark.parametrize("step", STEPS, ids=lambda p: p.name)
def test_step_metadata_and_files(step: Path) -> None:
    assert schema.STEP_DIR_RE.match(step.name)
    assert schema.step_problems(load(step / "metadata.yaml"), step.name) == []
    for entry in step.iterdir():
        assert entry.name == "metadata.yaml" or entry.name in schema.PHASES, entry
        if entry.name in schema.PHASES:
            assert os.access(entry, os.X_OK), f"{entry} is not executable"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"friendly-nam": "x"}, "unknown key 'friendly-nam'"),
        ({"spell-type": "bundle"}, "spell-type must be one of"),
        ({"version": True}, "'version' has the wrong type"),
        ({"options-whitelist": {"worker": "storage-driver"}}, "must be a list of strings"),
    ],
)
def test_a_wrong_spell_key_or_type_fails(change: dict[str, Any], problem: str) -> None:
    data = {**load(SPELL / "metadata.yaml"), **change}
    assert any(problem in line for line in schema.spell_problems(data))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"heading": "x"}, "unknown key 'heading'"),
        ({"viewable": "yes"}, "'viewable' has the wrong type"),
        ({"additional-input": [{"label": "x", "key": "X", "type": "float"}]}, "type must be"),
        ({"additional-input": [{"label": "x", "key": "lower", "type": "text"}]}, "environment"),
        (
            {"additional-input": [{"label": "x", "key": "X", "type": "integer", "default": "1"}]},
            "default does not match type integer",
        ),
        (
            {
                "additional-input": [
                    {
                        "label": "x",
                        "key": "X",
                        "type": "choice",
                        "default": "c",
                        "choices": ["a", "b"],
                    }
                ]
            },
            "default is not one of the choices",
        ),
    ],
)
def test_a_wrong_step_key_or_type_fails(change: dict[str, Any], problem: str) -> None:
    data = {**load(STEPS[0] / "metadata.yaml"), **change}
    assert any(problem in line for line in schema.step_problems(data))


def test_bundle_names_only_what_our_charm_has() -> None:
    bundle = load(SPELL / "bundle.yaml")
    metadata = load(ROOT / "metadata.yaml")
    options = load(ROOT / "config.yaml")["options"]
    worker = bundle["applications"][OUR_APP]
    assert set(worker.get("options", {})) <= set(options)
    ours = {**metadata.get("requires", {}), **metadata.get("provides", {})}
    related = set()
    for pair in bundle["relations"]:
        for end in pair:
            app, _, endpoint = end.partition(":")
            assert app in bundle["applications"], end
            if app == OUR_APP:
                assert endpoint in ours, end
                related.add(endpoint)
    assert related == {"lxd", "identity-credentials"}
    assert bundle["applications"]["nova-compute"]["options"]["virt-type"] == "lxd"
    spell = load(SPELL / "metadata.yaml")
    assert set(spell["options-whitelist"][OUR_APP]) <= set(options)


def test_every_action_the_steps_run_exists_with_its_params() -> None:
    actions = load(ROOT / "actions.yaml")
    for script in SCRIPTS:
        words = script.read_text().replace("\\\n", " ").split()
        for index, word in enumerate(words[:-2]):
            if word == "run" and words[index - 1] == "juju":
                rest = [w for w in words[index + 1 :] if not w.startswith("-")]
                rest = [w for w in rest if not w.startswith('"$model"')]
                action = rest[1]
                assert action in actions, f"{script}: {action}"
                for argument in rest[2:]:
                    if "=" not in argument or argument.startswith(("$", '"')):
                        break
                    param = argument.split("=", 1)[0]
                    assert param in actions[action]["params"], f"{script}: {action} {param}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing (scripts/setup-host installs it)"
    result = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# -- the scripts against recording stand-ins --------------------------------------------------


class Run:
    """One phase script run with stand-ins on PATH."""

    def __init__(self, tmp_path: Path, answers: dict[str, dict[str, Any]]) -> None:
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        # The stand-in finds its command's name in its file name: one copy per command.
        for name in ("juju", "lxc", "openstack", "modinfo"):
            shutil.copy(STANDIN, self.bin / f"{name}.py")
            wrapper = self.bin / name
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{self.bin}/{name}.py" "$@"\n')
            wrapper.chmod(0o755)
        sdk = tmp_path / "spells" / "sdk"
        sdk.mkdir(parents=True)
        (sdk / "common.sh").write_text(
            'setResult() { printf "%s" "$1" > "$RESULT_FILE"; }\nsetKey() { :; }\n'
        )
        self.log = tmp_path / "calls.jsonl"
        self.result = tmp_path / "result.txt"
        (tmp_path / "answers.json").write_text(json.dumps(answers))

    def __call__(self, script: Path, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "CONJURE_UP_SPELLSDIR": str(self.tmp / "spells"),
            "JUJU_CONTROLLER": "ctl",
            "JUJU_MODEL": "cloud",
            "STANDIN_LOG": str(self.log),
            "STANDIN_ANSWERS": str(self.tmp / "answers.json"),
            "RESULT_FILE": str(self.result),
            **env,
        }
        return subprocess.run(
            [str(script)], env=environment, capture_output=True, text=True, timeout=60
        )

    @property
    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    @property
    def said(self) -> str:
        return self.result.read_text() if self.result.exists() else ""


def juju_run_answer(**results: Any) -> dict[str, Any]:
    return {"stdout": json.dumps({"worker/0": {"status": "completed", "results": results}})}


STATUS = {
    "stdout": json.dumps(
        {
            "applications": {
                "nova-compute": {
                    "units": {
                        "nova-compute/0": {"subordinates": {"worker/0": {}}},
                        "nova-compute/1": {"subordinates": {"worker/1": {}}},
                    }
                },
                "keystone": {"units": {"keystone/0": {"public-address": "10.1.2.3"}}},
            }
        }
    )
}


def test_charm_step_copies_a_packed_charm(tmp_path: Path) -> None:
    spell = tmp_path / "spell"
    shutil.copytree(SPELL, spell)
    charm = tmp_path / "cc.charm"
    with zipfile.ZipFile(charm, "w") as archive:
        archive.writestr("dispatch", "#!/bin/sh\n")
        archive.writestr("metadata.yaml", "name: container-compute\n")
    run = Run(tmp_path, {})
    result = run(spell / "steps" / "00_charm" / "before-deploy", CHARM_PATH=str(charm))
    assert result.returncode == 0, result.stderr
    assert (spell / "container-compute.charm").read_bytes() == charm.read_bytes()
    assert run.calls == []
    (tmp_path / "not.charm").write_text("text")
    failed = run(
        spell / "steps" / "00_charm" / "before-deploy", CHARM_PATH=str(tmp_path / "not.charm")
    )
    assert failed.returncode == 1 and "is not a packed charm" in run.said


def test_profile_step_checks_modules_on_the_host_first(tmp_path: Path) -> None:
    sys_module = tmp_path / "sys-module"
    (sys_module / "openvswitch").mkdir(parents=True)
    modules_dir = tmp_path / "modules"
    modules_dir.mkdir()
    (modules_dir / "modules.builtin").write_text("kernel/net/netfilter/ip_tables.ko\n")
    run = Run(tmp_path, {"modinfo nbd": {"exit": 0}, "modinfo bogus": {"exit": 1}})
    script = SPELL / "steps" / "01_localhost-profile" / "before-deploy"
    env = {"CC_SYS_MODULE": str(sys_module), "CC_MODULES_DIR": str(modules_dir)}

    result = run(script, KERNEL_MODULES="openvswitch, nbd,ip_tables", **env)

    assert result.returncode == 0, result.stderr
    assert [c for c in run.calls if c[0] == "lxc"] == [
        ["lxc", "profile", "set", "juju-cloud", "security.nesting", "true"],
        ["lxc", "profile", "set", "juju-cloud", "security.privileged", "true"],
        ["lxc", "profile", "set", "juju-cloud", "linux.kernel_modules", "openvswitch,nbd"],
    ]
    run.log.unlink()
    failed = run(script, KERNEL_MODULES="nbd,bogus", **env)
    assert failed.returncode == 1
    assert "missing on this host: bogus" in run.said
    assert [c for c in run.calls if c[0] == "lxc"] == []  # nothing changed


def test_image_step_builds_on_every_worker_and_creates_the_flavor(tmp_path: Path) -> None:
    run = Run(
        tmp_path,
        {
            "juju status": STATUS,
            "juju run": juju_run_answer(alias="container-compute-worker"),
            "openstack flavor show": {"exit": 1, "stderr": "No Flavor found"},
        },
    )
    env = {
        "IMAGE_SOURCE": "busybox",
        "FLAVOR_NAME": "cc-worker",
        "FLAVOR_RAM": "512",
        "ADMIN_PASSWORD": "s3cret",
    }
    result = run(SPELL / "steps" / "02_worker-image" / "after-deploy", **env)
    assert result.returncode == 0, result.stderr
    assert run.calls == [
        ["juju", "status", "-m", "ctl:cloud", "worker", "--format", "json"],
        [
            "juju",
            "run",
            "-m",
            "ctl:cloud",
            "worker/0",
            "build-worker-image",
            "source=busybox",
            "--format",
            "json",
        ],
        [
            "juju",
            "run",
            "-m",
            "ctl:cloud",
            "worker/1",
            "build-worker-image",
            "source=busybox",
            "--format",
            "json",
        ],
        ["juju", "status", "-m", "ctl:cloud", "keystone", "--format", "json"],
        ["openstack", "flavor", "show", "cc-worker"],
        [
            "openstack",
            "flavor",
            "create",
            "cc-worker",
            "--ram",
            "512",
            "--vcpus",
            "1",
            "--disk",
            "2",
            "--property",
            "lxd:privileged_allowed=false",
            "--property",
            "lxd:nested_allowed=false",
            "--property",
            "lxd:isolated=true",
        ],
        ["juju", "config", "-m", "ctl:cloud", "worker", "nova-flavor=cc-worker"],
    ]
    assert "s3cret" not in json.dumps(run.calls) and "s3cret" not in run.said
    assert "flavor cc-worker ready" in run.said


def test_image_step_fails_clearly_when_juju_refuses(tmp_path: Path) -> None:
    run = Run(
        tmp_path,
        {
            "juju status": STATUS,
            "juju run": {"exit": 1, "stderr": "ERROR action build-worker-image failed"},
        },
    )
    env = {"IMAGE_SOURCE": "busybox", "FLAVOR_NAME": "f", "FLAVOR_RAM": "1", "ADMIN_PASSWORD": "p"}
    result = run(SPELL / "steps" / "02_worker-image" / "after-deploy", **env)
    assert result.returncode == 1
    assert run.said == "build-worker-image failed on worker/0: see juju show-task"
    assert not any(c[0] == "openstack" for c in run.calls)


def test_smoke_step_launches_waits_and_gathers(tmp_path: Path) -> None:
    run = Run(
        tmp_path,
        {
            "juju run -m ctl:cloud worker/0 launch-job": juju_run_answer(
                job="j0123abcd", state="succeeded"
            ),
            "juju run -m ctl:cloud worker/0 gather-results": juju_run_answer(
                **{"results-dir": "/var/lib/container-compute/results/j0123abcd"}
            ),
        },
    )
    result = run(SPELL / "steps" / "03_smoke-job" / "after-deploy", SMOKE_TASKS="4")
    assert result.returncode == 0, result.stderr
    assert run.calls == [
        [
            "juju",
            "run",
            "-m",
            "ctl:cloud",
            "worker/0",
            "launch-job",
            "command=echo $((TASK_INDEX * TASK_INDEX)) > /results/square",
            "tasks=4",
            "wait=true",
            "--format",
            "json",
        ],
        [
            "juju",
            "run",
            "-m",
            "ctl:cloud",
            "worker/0",
            "gather-results",
            "job=j0123abcd",
            "--format",
            "json",
        ],
    ]
    assert run.said == (
        "Smoke job j0123abcd: 4 tasks succeeded; results in "
        "/var/lib/container-compute/results/j0123abcd on worker/0"
    )


@pytest.mark.parametrize(
    ("answers", "said"),
    [
        (
            {"juju run -m ctl:cloud worker/0 launch-job": {"exit": 1, "stderr": "ERROR no unit"}},
            "launch-job failed on worker/0: see juju show-task",
        ),
        (
            {
                "juju run -m ctl:cloud worker/0 launch-job": juju_run_answer(
                    job="j1", state="failed"
                )
            },
            "Smoke job j1 ended failed: juju run worker/0 job-status job=j1",
        ),
    ],
)
def test_smoke_step_fails_clearly(tmp_path: Path, answers: dict[str, Any], said: str) -> None:
    run = Run(tmp_path, answers)
    result = run(SPELL / "steps" / "03_smoke-job" / "after-deploy", SMOKE_TASKS="4")
    assert result.returncode == 1
    assert run.said == said
