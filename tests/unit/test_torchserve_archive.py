"""Reading .mar archives (zip, tgz, no-archive), safe extraction, model-config YAML,
config.properties, and handlers of two archives kept apart."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from pyserve.errors import ServerError
from pyserve.torchserve import config
from pyserve.torchserve.archive import ArchiveError, Limits, open_archive
from pyserve.torchserve.handler import archive_imports, load_entry_point

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from torchserve_archives import HAVE_ARCHIVER, make_mar  # noqa: E402

HANDLER = "def handle(data, context):\n    return data\n"


@pytest.mark.parametrize("archive_format", ["default", "tgz", "no-archive"])
def test_torchserve_archive_formats(tmp_path, archive_format):
    if archive_format != "default" and not HAVE_ARCHIVER:
        pytest.skip("torch-model-archiver (pyserve[torchserve]) makes the tgz and "
                    "no-archive formats")
    source = make_mar(tmp_path / "store", "echo", {"h.py": HANDLER, "setup.yaml": "batchSize: 4\n",
                                                   "notes.txt": "extra"},
                      handler="h.py", version="2.5", config_file="setup.yaml",
                      archive_format=archive_format)
    archive = open_archive(source, tmp_path)
    try:
        assert archive.manifest.model_name == "echo"
        assert archive.manifest.version == "2.5"
        assert archive.manifest.handler == "h.py"
        assert (archive.model_dir / "h.py").read_text() == HANDLER
        assert (archive.model_dir / "notes.txt").read_text() == "extra"
        assert archive.model_yaml() == {"batchSize": 4}
    finally:
        archive.cleanup()
    if archive_format == "no-archive":
        assert (source / "h.py").is_file()  # used in place, never removed
    else:
        assert not archive.model_dir.exists()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("member", ["../evil.py", "/abs/evil.py", "a/../../evil.py",
                                    "C:/evil.py"])
def test_torchserve_zip_member_escaping_is_refused(tmp_path, member):
    source = _zip(tmp_path / "bad.mar", {"MAR-INF/MANIFEST.json": b"{}", member: b"x"})
    (tmp_path / "work").mkdir()
    with pytest.raises(ArchiveError, match="outside the archive"):
        open_archive(source, tmp_path / "work")
    assert not (tmp_path / "evil.py").exists()
    assert list((tmp_path / "work").iterdir()) == []  # the partial extraction is removed


def test_torchserve_tar_links_and_escapes_are_refused(tmp_path):
    for name, kind in (("link", tarfile.SYMTYPE), ("../up", tarfile.REGTYPE)):
        source = tmp_path / f"{name.strip('./')}.tar.gz"
        with tarfile.open(source, "w:gz") as archive:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd"
            archive.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        with pytest.raises(ArchiveError):
            open_archive(source, tmp_path)


def test_torchserve_extraction_limits(tmp_path):
    source = _zip(tmp_path / "big.mar", {"MAR-INF/MANIFEST.json": b"{}",
                                         "weights.bin": b"\0" * 10_000})
    with pytest.raises(ArchiveError, match="more than the limit of 4096 bytes"):
        open_archive(source, tmp_path, Limits(max_extracted_bytes=4096))
    with pytest.raises(ArchiveError, match="2 members, more than the limit of 1"):
        open_archive(source, tmp_path, Limits(max_members=1))
    archive = open_archive(source, tmp_path, Limits(max_extracted_bytes=20_000))
    assert (archive.model_dir / "weights.bin").stat().st_size == 10_000
    archive.cleanup()


def test_torchserve_zip_lying_about_its_size_is_stopped(tmp_path):
    """The limit counts bytes really written, not the sizes the zip's directory claims."""
    source = _zip(tmp_path / "liar.mar", {"MAR-INF/MANIFEST.json": b"{}",
                                          "w.bin": b"\0" * 50_000})
    data = bytearray(source.read_bytes())
    # Patch the central directory's uncompressed size of w.bin (offset 24 in its entry) to 1.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (1).to_bytes(4, "little")
    source.write_bytes(bytes(data))
    with pytest.raises((ArchiveError, zipfile.BadZipFile)):
        open_archive(source, tmp_path, Limits(max_extracted_bytes=1000))


def test_torchserve_invalid_manifest(tmp_path):
    source = _zip(tmp_path / "m.mar", {"MAR-INF/MANIFEST.json": b"{not json"})
    with pytest.raises(ArchiveError, match="Invalid MANIFEST.json"):
        open_archive(source, tmp_path)
    with pytest.raises(ArchiveError, match="not a model archive"):
        (tmp_path / "plain.mar").write_text("hello")
        open_archive(tmp_path / "plain.mar", tmp_path)


def test_torchserve_config_properties(tmp_path):
    text = """
# comment
inference_address=http://0.0.0.0:9080
management_address: https://127.0.0.1:9081
metrics_address=127.0.0.1:9082
model_store=store
load_models=a.mar, b=b.mar
default_workers_per_model=3
enable_model_api=true
disable_token_authorization=true
service_envelope=kservev2
models={"a": {"1.0": {"minWorkers": 2, "batchSize": 8}}}
allowed_urls=https://example\\\\.com/.*, file://.*
"""
    options = config.resolve(config.parse_properties(text))
    assert options.inference_address == config.Address("http", "0.0.0.0", 9080)
    assert options.management_address == config.Address("https", "127.0.0.1", 9081)
    assert options.metrics_address.port == 9082
    assert options.model_store == (Path.cwd() / "store").resolve()
    assert options.load_models == ["a.mar", "b=b.mar"]
    assert options.workers_per_model == 3
    assert options.enable_model_api and not options.token_auth
    assert options.service_envelope == "kservev2"
    assert options.models["a"]["1.0"]["batchSize"] == 8
    assert len(options.allowed_urls) == 2
    flags = config.resolve({}, models=["x=y.mar"], disable_token_auth=True)
    assert flags.load_models == ["x=y.mar"] and not flags.token_auth
    assert config.resolve({}).token_auth  # on by default, as in TorchServe 0.12


def test_torchserve_config_kserves_keys(monkeypatch, caplog):
    """What KServe's sample config.properties and TorchServe runtime set."""
    snapshot = ('{"name":"startup.cfg","modelCount":1,"models":{"mnist":{"1.0":{'
                '"defaultVersion":true,"marName":"mnist.mar","minWorkers":1,"maxWorkers":5,'
                '"batchSize":2,"maxBatchDelay":500,"responseTimeout":60}}}}')
    with caplog.at_level("WARNING", logger="pyserve"):
        options = config.resolve({"install_py_dep_per_model": "true", "model_snapshot": snapshot})
    assert "install_py_dep_per_model=true is ignored" in caplog.text
    assert options.load_models == ["mnist=mnist.mar"]
    assert options.models["mnist"]["1.0"]["maxWorkers"] == 5
    # Flags and load_models choose the models themselves; the snapshot still gives settings.
    options = config.resolve({"model_snapshot": snapshot, "load_models": "a.mar"})
    assert options.load_models == ["a.mar"] and options.models["mnist"]["1.0"]["batchSize"] == 2
    # TS_<KEY> overrides the file only with enable_envvars_config=true, as in TorchServe.
    def with_environment(properties):
        return config.resolve(config.environment_overrides(properties))

    monkeypatch.setenv("TS_SERVICE_ENVELOPE", "kservev2")
    monkeypatch.setenv("TS_INFERENCE_ADDRESS", "http://0.0.0.0:9085")
    assert with_environment({"service_envelope": "kserve"}).service_envelope == "kserve"
    options = with_environment({"enable_envvars_config": "true", "service_envelope": "kserve"})
    assert options.service_envelope == "kservev2"
    assert options.inference_address == config.Address("http", "0.0.0.0", 9085)
    monkeypatch.setenv("TS_SERVICE_ENVELOPE", "")  # KServe's template, no label: none
    assert with_environment({"enable_envvars_config": "true"}).service_envelope == ""


def test_torchserve_config_refusals():
    with pytest.raises(ServerError, match="model_snapshot"):
        config.resolve({"model_snapshot": "{not json"})
    with pytest.raises(ServerError, match="service_envelope"):
        config.resolve({"service_envelope": "seldon"})
    with pytest.raises(ServerError, match="both private_key_file and certificate_file"):
        config.resolve({"private_key_file": "k.pem"})
    with pytest.raises(ServerError, match="must be an integer"):
        config.resolve({"default_workers_per_model": "many"})


def test_torchserve_archives_with_the_same_module_names_stay_apart(tmp_path):
    """Two archives both ship handler.py and model.py; each handler sees its own model.py."""
    handlers = {}
    for name, value in (("a", 1), ("b", 2)):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "model.py").write_text(f"VALUE = {value}\n")
        (directory / "handler.py").write_text(
            "import model\n"
            "def handle(data, context):\n"
            "    return None if data is None else [model.VALUE for _ in data]\n")
        with archive_imports(directory, f"ns_{name}"):
            entry, initialize, _ = load_entry_point(directory, "handler.py", name)
            initialize(None)
        handlers[name] = entry
    assert handlers["a"]([{}], None) == [1]
    assert handlers["b"]([{}], None) == [2]
    assert "handler" not in sys.modules and "model" not in sys.modules
    assert sys.modules["ns_a.model"].VALUE == 1 and sys.modules["ns_b.model"].VALUE == 2


def test_torchserve_handler_errors(tmp_path):
    (tmp_path / "two.py").write_text("class A:\n    def handle(self, d, c): pass\n"
                                     "class B:\n    def handle(self, d, c): pass\n")
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with archive_imports(tmp_path, "ns_errors"):
        with pytest.raises(ServerError, match="Expected only one class|expected only one class"):
            load_entry_point(tmp_path, "two", "m")
        with pytest.raises(ServerError, match="failed to import.*not_a_module_anywhere"):
            load_entry_point(tmp_path, "broken.py", "m")
        with pytest.raises(ServerError, match="names no handler"):
            load_entry_point(tmp_path, "", "m")
        with pytest.raises(ServerError, match="not a module of the archive|ts package"):
            load_entry_point(tmp_path, "no_such_handler", "m")


def test_torchserve_manifest_json_written_by_hand(tmp_path):
    manifest = {"runtime": "python", "model": {"modelName": "m", "handler": "h.py"}}
    source = _zip(tmp_path / "m.mar", {"MAR-INF/MANIFEST.json": json.dumps(manifest).encode(),
                                       "h.py": HANDLER.encode()})
    archive = open_archive(source, tmp_path)
    assert archive.manifest.version == "1.0"  # TorchServe's default when none is written
    assert archive.model_yaml() == {}
    archive.cleanup()


def test_torchserve_archive_written_without_the_archiver(tmp_path, monkeypatch):
    """The tests' own zip writer (used where torch-model-archiver is not installed) makes
    archives that read like the archiver's."""
    import torchserve_archives

    monkeypatch.setattr(torchserve_archives, "HAVE_ARCHIVER", False)
    source = torchserve_archives.make_mar(tmp_path / "store", "plain", {"h.py": HANDLER,
                                                                       "c.yaml": "batchSize: 2\n"},
                                          handler="h.py", config_file="c.yaml")
    archive = open_archive(source, tmp_path)
    assert (archive.manifest.model_name, archive.manifest.handler) == ("plain", "h.py")
    assert archive.model_yaml() == {"batchSize": 2}
    archive.cleanup()
