"""The reference signer survives a power cut at every write (issue 15, item 6).

The signer runs as its own process (`custody-signer simulate`) and is SIGKILLed at a named fault point
(SIGNER_FAULT, see custody_signer.faults): mid-write, written but not fsynced, fsynced but not renamed,
renamed but the directory not fsynced, and between the steps of a firmware install. A kill alone keeps what
the kernel had cached; for a power cut the test then drops everything the signer had not made durable
(`faults.drop_unsynced`, from the journal the signer kept under SIGNER_FAULT_JOURNAL): unsynced data cut to
nothing or torn in half, renames and new files whose directory was not fsynced undone. Then the device is
started again and must work: the first start completes with the seed it had made durably, the firmware
boots (old or new, and verified), and the state is the old one or the new one.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from embit import bip32
from embit.networks import NETWORKS

from custody_signer import faults, firmware, protocol
from custody_signer.device import Device, DeviceError, factory_image
from custody_signer.flash import SLOTS
from custody_signer.hsm import verify_log
from custody_signer.simulator import call, spawn

# every fault point a first start passes, in order (a change to the signer's writes must show up here)
STAGES = ("partly written", "written", "synced", "renamed")      # of each durable write
FIRST_START = [*[f"seed.hex:{s}" for s in STAGES], *[f"slot_a.img:{s}" for s in STAGES], "slot written",
               *[f"boot.json:{s}" for s in STAGES], *[f"device.json:{s}" for s in STAGES]]
RECORD = [f"boot.json:{s}" for s in STAGES]
UPGRADE = ["verified", *[f"slot_b.img:{s}" for s in STAGES],
           "slot written", *RECORD, "pending recorded", "pending verified at boot", *RECORD]
MODES = ["killed", "power cut", "torn"]           # what is lost besides the process: nothing, unsynced data, half


def occurrences(points: list[str]) -> list[str]:
    """SIGNER_FAULT values: `point@N` for the N-th time a point is reached."""
    return [f"{p}@{points[:i + 1].count(p)}" for i, p in enumerate(points)]


@pytest.fixture
def discovery():
    """Simulators announce their sockets here (short: a Unix socket path holds about 100 bytes)."""
    directory = tempfile.mkdtemp(prefix="pl-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def syscalls(monkeypatch):
    """`syscalls()` starts recording this process's fsyncs ("fsync", path) and renames ("rename", src, dst)."""
    def start() -> list[tuple]:
        events: list[tuple] = []
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

        def fsync(fd):
            events.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
            return real_fsync(fd)

        def renaming(real):
            def rename(src, dst, *args, **kwargs):
                events.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
                return real(src, dst, *args, **kwargs)
            return rename

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", renaming(real_replace))
        monkeypatch.setattr(os, "rename", renaming(real_rename))
        return events
    return start


def environment(discovery: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNER_FAULT")}
    return {**env, "CUSTODY_SIGNER_DISCOVERY": discovery, **extra}


def simulate_until_killed(state: Path, env: dict) -> None:
    """Start the device's process; it must die by SIGKILL at its fault point, before it ever listens."""
    process = subprocess.Popen([sys.executable, "-m", "custody_signer.cli", "simulate", "--state", str(state)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    if line:                                          # it started: the fault point was never reached
        process.terminate()
        process.wait(timeout=10)
        pytest.fail(f"the signer never reached {env.get(faults.FAULT)!r}: it started ({line.strip()})")
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()


def cut_power(journal: Path, mode: str) -> list[str]:
    if mode == "killed":
        return []
    return faults.drop_unsynced(journal, keep=0.5 if mode == "torn" else 0.0)


def temporaries(state: Path) -> list[str]:
    return [str(p.relative_to(state)) for p in state.rglob(".*.tmp")]


def seed_of(state: Path) -> bytes | None:
    path = state / "seed.hex"
    if not path.exists():
        return None
    text = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", text), f"seed.hex holds {len(text)} bytes that are not a seed: {text!r}"
    return bytes.fromhex(text)


def fingerprint(seed: bytes) -> str:
    return bip32.HDKey.from_seed(seed, version=NETWORKS["regtest"]["xprv"]).my_fingerprint.hex()


# -- first start --------------------------------------------------------------------------------------------
def test_a_first_start_passes_every_fault_point_and_what_it_reports_survives_a_cut(tmp_path, discovery):
    state, trace, journal = tmp_path / "signer", tmp_path / "trace", tmp_path / "journal"
    process, info = spawn(state, env=environment(discovery, SIGNER_FAULT_TRACE=str(trace),
                                                 SIGNER_FAULT_JOURNAL=str(journal)))
    process.send_signal(signal.SIGKILL)                     # the power goes once the device has reported
    process.wait(timeout=10)
    assert trace.read_text().splitlines() == FIRST_START
    assert faults.drop_unsynced(journal) == []             # nothing it reported was still in memory only
    device = Device(state)
    assert (device.fingerprint, device.config["serial"]) == (info["fingerprint"], info["serial"])
    assert info["firmware"]["version"] == "1.0.0"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("point", occurrences(FIRST_START))
def test_a_first_start_killed_at_any_point_completes_at_the_next(tmp_path, discovery, point, mode):
    state, journal = tmp_path / "signer", tmp_path / "journal"
    simulate_until_killed(state, environment(discovery, SIGNER_FAULT=point, SIGNER_FAULT_JOURNAL=str(journal)))
    cut_power(journal, mode)
    left = seed_of(state)                                  # never a zero-byte or partial seed.hex
    at, renamed = occurrences(FIRST_START).index(point), occurrences(FIRST_START).index("seed.hex:renamed@1")
    durable = at > renamed or (at == renamed and mode == "killed")    # a kill alone loses no rename
    assert (left is not None) == durable, f"seed.hex {'missing' if left is None else 'present'} after {mode}"

    device = Device.open_or_create(state)                  # the next start: never "File exists: seed.hex"
    if left is not None:                                   # a seed written whole is the device's seed
        assert device.fingerprint == fingerprint(left)
    assert seed_of(state) is not None and device.fingerprint == fingerprint(seed_of(state))
    assert device.running.version == (1, 0, 0)
    assert temporaries(state) == []
    again = Device.open_or_create(state)                  # and the device it made stays the same device
    assert (again.fingerprint, again.config) == (device.fingerprint, device.config)


@pytest.mark.parametrize("damage", [b"", b"5f3a9c", b"\0" * 64])
def test_a_seed_an_older_firmware_tore_is_replaced_during_first_start(tmp_path, damage):
    """The reviewer's cut 8 s into a first start left a zero-byte seed.hex and no device.json: the first
    start never finished, so nothing was derived from that seed; the next start makes a whole one (before
    the fix it stopped at `File exists: seed.hex` forever)."""
    state = tmp_path / "signer"
    state.mkdir()
    (state / "seed.hex").write_bytes(damage)
    device = Device.open_or_create(state)
    assert len(seed_of(state)) == 32 and device.fingerprint == fingerprint(seed_of(state))
    assert Device(state).fingerprint == device.fingerprint


@pytest.mark.parametrize("damage", [b"", b"5f3a9c", b"\0" * 64])
def test_a_device_whose_seed_is_damaged_refuses_to_start(tmp_path, damage):
    """Once the device exists its seed is never replaced, and a damaged one is never used: an empty seed.hex
    was read as the empty seed before, a valid-looking key nobody backed up."""
    state = tmp_path / "signer"
    Device.create(state)
    (state / "seed.hex").write_bytes(damage)
    with pytest.raises(DeviceError, match="seed.hex is damaged"):
        Device(state)
    with pytest.raises(DeviceError, match="seed.hex is damaged"):
        Device.open_or_create(state)
    assert (state / "seed.hex").read_bytes() == damage


# -- firmware upgrade -----------------------------------------------------------------------------------------
def upgrade_image() -> bytes:
    return factory_image("1.1.0", epoch=2)


def test_an_upgrade_passes_every_fault_point(tmp_path, discovery):
    state, trace = tmp_path / "signer", tmp_path / "trace"
    Device.create(state)
    process, info = spawn(state, env=environment(discovery, SIGNER_FAULT_TRACE=str(trace)))
    try:
        result = call(info["socket"], {"op": "install_firmware",
                                       "image": base64.b64encode(upgrade_image()).decode()})
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert result["version"] == "1.1.0"
    assert trace.read_text().splitlines() == UPGRADE


def verifies(image: bytes) -> firmware.Manifest:
    return protocol.verify_image(image, trusted_keys=protocol.test_release_public_keys(3), threshold=2,
                                 model="custody-signer-sim", installed_version=(0, 0, 0), epoch_counter=0,
                                 production=False)


def record_names_only_verified_slots(state: Path) -> None:
    """As the cut left it, before anything runs: the boot record is whole, and every slot it names (active,
    and pending if any) holds a complete image that verifies."""
    record = json.loads((state / "flash" / "boot.json").read_text())
    for slot in {record["active"], record["pending"]} - {None}:
        verifies((state / "flash" / f"slot_{slot}.img").read_bytes())


def boots_verified(state: Path) -> Device:
    """Start the device and check, independently of its boot code, that the active slot holds a verified
    image for this device and that no install is left half-done."""
    device = Device(state)
    record = device.flash.record()
    assert record["active"] in SLOTS and record["pending"] is None
    assert verifies((state / "flash" / f"slot_{record['active']}.img").read_bytes()) == device.running
    assert Device(state).running == device.running          # and keeps booting it
    return device


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("point", occurrences(UPGRADE))
def test_an_upgrade_killed_at_any_point_leaves_a_device_that_boots(tmp_path, discovery, point, mode):
    state, journal = tmp_path / "signer", tmp_path / "journal"
    made = Device.create(state)
    process, info = spawn(state, env=environment(discovery, SIGNER_FAULT=point, SIGNER_FAULT_JOURNAL=str(journal)))
    with pytest.raises(Exception):                         # the device dies before it answers
        call(info["socket"], {"op": "install_firmware", "image": base64.b64encode(upgrade_image()).decode()},
             timeout=30)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    cut_power(journal, mode)

    record_names_only_verified_slots(state)
    device = boots_verified(state)
    at = occurrences(UPGRADE).index(point)
    # the new firmware runs once its pending record is durable (or, if only killed, once it is renamed)
    staged = occurrences(UPGRADE).index("pending recorded@1" if mode != "killed" else "boot.json:renamed@1")
    expected = (1, 1, 0) if at >= staged else (1, 0, 0)
    assert device.running.version == expected
    assert device.flash.record()["epoch_counter"] == (2 if expected == (1, 1, 0) else 1)
    assert device.fingerprint == made.fingerprint
    if expected == (1, 0, 0):                               # the upgrade can simply be done again
        assert device.install_firmware(upgrade_image())["version"] == "1.1.0"
        assert boots_verified(state).running.version == (1, 1, 0)
        assert temporaries(state) == []


def test_an_acknowledged_upgrade_survives_a_power_cut(tmp_path, syscalls, monkeypatch):
    """The reviewer's second cut: after the device answered the upgrade, nothing of it may be lost (the slot
    it boots was empty before: neither the slot nor the record was fsynced). The record may name slot b only
    once slot b's bytes are fsynced, renamed into place with the directory fsynced and read back; and the
    answer comes only once the record that activates it is durable."""
    state, journal = Path(os.path.realpath(tmp_path)) / "signer", tmp_path / "journal"
    Device.create(state)
    monkeypatch.setenv(faults.JOURNAL, str(journal))
    events = syscalls()
    assert Device(state).install_firmware(upgrade_image())["version"] == "1.1.0"
    flash, slot, record = str(state / "flash"), str(state / "flash" / "slot_b.img"), str(state / "flash" / "boot.json")
    slot_in_place = next((i for i, e in enumerate(events) if e[0] == "rename" and e[2] == slot), None)
    assert slot_in_place is not None, "slot b is written in place, not renamed into place"
    assert ("fsync", events[slot_in_place][1]) in events[:slot_in_place]
    slot_durable = events.index(("fsync", flash), slot_in_place)
    records = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == record]
    assert len(records) == 2 and slot_durable < records[0]          # staged (pending b), then activated
    assert ("fsync", flash) in events[records[-1]:]                 # the activation is durable before the answer
    assert faults.drop_unsynced(journal) == []                      # so a power cut now loses nothing
    assert boots_verified(state).running.version == (1, 1, 0)


# -- the rest of the state: the old state or the new -------------------------------------------------------
def other_key(n: int) -> str:
    root = bip32.HDKey.from_seed(hashlib.sha256(f"cosigner {n}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])
    xpub = root.derive("m/48h/1h/0h/2h").to_public().to_string(NETWORKS["regtest"]["xpub"])
    return f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{xpub}/<0;1>/*"


def vault_descriptor(device: Device, account: int) -> str:
    path = f"m/48h/1h/{account}h/2h"
    own = f"[{device.fingerprint}/48h/1h/{account}h/2h]{device.xpub(path)}/<0;1>/*"
    return f"wsh(sortedmulti(2,{own},{other_key(1)},{other_key(2)}))"


WALLET_WRITE = [f"wallets.json:{s}" for s in STAGES]


@pytest.mark.parametrize("mode", ["power cut", "torn"])
@pytest.mark.parametrize("point", WALLET_WRITE)
def test_a_registration_cut_before_it_is_durable_leaves_the_wallets_as_they_were(tmp_path, discovery, point, mode):
    state, journal = tmp_path / "signer", tmp_path / "journal"
    device = Device.create(state)
    device.register("first", vault_descriptor(device, 0))
    before = (state / "wallets.json").read_bytes()
    process, info = spawn(state, env=environment(discovery, SIGNER_FAULT=point, SIGNER_FAULT_JOURNAL=str(journal)))
    with pytest.raises(Exception):
        call(info["socket"], {"op": "register", "name": "second", "descriptor": vault_descriptor(device, 1)})
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    lost = cut_power(journal, mode)
    assert lost, "the power cut dropped nothing"
    assert (state / "wallets.json").read_bytes() == before     # the old list, whole
    again = Device(state)
    assert [w.name for w in again.wallets()] == ["first"]
    again.register("second", vault_descriptor(device, 1))
    assert [w.name for w in Device(state).wallets()] == ["first", "second"]


def install_policy(state: Path, policy: dict, env: dict) -> subprocess.CompletedProcess:
    file = state.parent / "policy.json"
    file.write_text(json.dumps(policy))
    return subprocess.run([sys.executable, "-m", "custody_signer.cli", "hsm-policy", "--state", str(state), str(file)],
                          capture_output=True, text=True, env=env, timeout=60)


def policy_hash(policy: dict) -> str:
    return hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).hexdigest()


POLICY_A = {"approvers": {}, "rules": [{"max_amount": 1000}]}
POLICY_B = {"approvers": {}, "rules": [{"max_amount": 2000}]}
POLICY_INSTALL = ["hsm_log.jsonl:written", "hsm_log.jsonl:synced",
                  *[f"hsm_policy.json:{s}" for s in STAGES]]


def test_a_policy_install_passes_every_fault_point(tmp_path, discovery):
    state, trace = tmp_path / "signer", tmp_path / "trace"
    Device.create(state)
    done = install_policy(state, POLICY_A, environment(discovery, SIGNER_FAULT_TRACE=str(trace)))
    assert done.returncode == 0, done.stderr
    assert trace.read_text().splitlines() == POLICY_INSTALL


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("point", POLICY_INSTALL)
def test_a_policy_install_cut_anywhere_leaves_a_whole_log_and_a_logged_policy(tmp_path, discovery, point, mode):
    """A cut while the decision log is appended to leaves at most a torn last line, cut back at the next
    start so the hash chain still verifies; the policy in force is always one the log shows installed."""
    state, journal = tmp_path / "signer", tmp_path / "journal"
    Device.create(state).hsm.install(POLICY_A)
    killed = install_policy(state, POLICY_B, environment(discovery, SIGNER_FAULT=point,
                                                         SIGNER_FAULT_JOURNAL=str(journal)))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cut_power(journal, mode)

    device = Device(state)
    log = device.hsm.log()
    assert verify_log(log) is None
    assert device.hsm.policy in (POLICY_A, POLICY_B)
    assert policy_hash(device.hsm.policy) in {e.get("policy_sha256") for e in log}
    assert not (state / "hsm_log.jsonl").read_bytes() or (state / "hsm_log.jsonl").read_bytes().endswith(b"\n")
    device.hsm.install(POLICY_B)                           # and the log goes on, still one chain
    assert verify_log(Device(state).hsm.log()) is None and Device(state).hsm.policy == POLICY_B


# -- the syscalls: every file is fsynced, renamed into place, its directory fsynced ---------------------------
def test_every_state_file_is_fsynced_then_renamed_then_its_directory_fsynced(tmp_path, syscalls):
    """Watch the device's fsyncs and renames while it starts, registers, takes a policy, shows an address and
    upgrades: every state file ends as the rename of a temporary file fsynced before it, followed by an
    fsync of its directory; the logs are fsynced after each append; each directory is fsynced in its parent."""
    events = syscalls()
    state = Path(os.path.realpath(tmp_path)) / "signer"
    device = Device.create(state)
    name = device.register("vault", vault_descriptor(device, 0))["name"]
    device.display_address(name, 0, 3)
    device.hsm.install(POLICY_A)
    device.install_firmware(upgrade_image())

    files = [p for p in state.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"seed.hex", "device.json", "wallets.json", "hsm_policy.json", "hsm_log.jsonl",
                                       "screen.log", "boot.json", "slot_a.img", "slot_b.img"}
    for path in map(str, files):
        if path.endswith((".jsonl", ".log")):
            assert ("fsync", path) in events, f"{path} is never fsynced"
            continue
        renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == path]
        assert renames, f"{path} was written in place, never renamed into place"
        last = renames[-1]
        temporary = events[last][1]
        assert os.path.dirname(temporary) == os.path.dirname(path)
        assert ("fsync", temporary) in events[:last], f"{path} renamed into place before its data was fsynced"
        assert ("fsync", os.path.dirname(path)) in events[last:], f"the rename of {path} is never made durable"
    for directory in (state, state / "flash"):
        assert ("fsync", str(directory.parent)) in events, f"{directory} is never made durable in its parent"


def test_the_drop_simulation_loses_what_ext4_could(tmp_path, monkeypatch):
    """The simulation itself: unsynced data goes, a rename without a directory fsync is undone (the old file
    comes back, the new one's directory entry goes), durable writes stay."""
    from custody_signer import durable
    journal = tmp_path / "journal"
    target = tmp_path / "state.json"
    durable.atomic_write(target, "old")
    monkeypatch.setenv(faults.JOURNAL, str(journal))
    durable.atomic_write(target, "new")                              # durable: survives
    assert faults.drop_unsynced(journal) == [] and target.read_text() == "new"
    faults.note("data", path=str(target), size=0)                    # as if written, never fsynced
    assert faults.drop_unsynced(journal) and target.read_bytes() == b""
    durable.atomic_write(target, "kept")
    backup = faults.keep_old(target)                                 # a rename, no directory fsync after it
    other = tmp_path / ".state.json.x.tmp"
    other.write_text("lost")
    faults.note("create", path=str(other))
    faults.note("data", path=str(other), size=0)
    faults.note("fsync", path=str(other))
    os.replace(other, target)
    faults.note("rename", src=str(other), dst=str(target), backup=backup)
    assert len(faults.drop_unsynced(journal)) == 2
    assert target.read_text() == "kept" and not other.exists()
    log = tmp_path / "log"
    durable.append(log, "one\n")
    faults.note("data", path=str(log), size=log.stat().st_size)      # an append not yet fsynced
    with open(log, "a") as f:
        f.write("two, torn\n")
    faults.drop_unsynced(journal, keep=0.5)
    assert log.read_text() == "one\ntwo, "
    assert durable.drop_torn_tail(log) == 5 and log.read_text() == "one\n"
