"""mmengine's PetrelBackend, unchanged, against a live gateway through the
`petrel_client` shim: the calls mmengine makes and the values it relies on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clientconf import write_conf

mmengine_fileio = pytest.importorskip("mmengine.fileio")
from mmengine.fileio.backends import PetrelBackend  # noqa: E402


@pytest.fixture
def backend(home: Path, gateway) -> PetrelBackend:  # type: ignore[no-untyped-def]
    # PetrelBackend reads ~/petreloss.conf when given no path: HOME is a temp folder.
    write_conf(home / "petreloss.conf", gateway.endpoint)
    return PetrelBackend()


def test_backend_methods(backend: PetrelBackend, bucket: str) -> None:
    root = f"s3://{bucket}/data"
    path = backend.join_path(root, "dir", "a.bin")
    assert path == f"s3://{bucket}/data/dir/a.bin"
    backend.put(b"\x00binary", path)
    assert backend.get(path) == b"\x00binary"
    text_path = backend.join_path(root, "dir", "sub", "t.txt")
    backend.put_text("héllo", text_path)
    assert backend.get_text(text_path) == "héllo"
    backend.put_text("top", backend.join_path(root, "top.py"))
    assert backend.exists(path) and backend.exists(f"{root}/dir") and backend.exists(root)
    assert not backend.exists(f"{root}/absent")
    assert backend.isdir(f"{root}/dir") and backend.isdir(f"{root}/dir/")
    assert not backend.isdir(path)
    assert backend.isfile(path) and not backend.isfile(f"{root}/dir")
    with backend.get_local_path(path) as local:
        assert Path(local).read_bytes() == b"\x00binary"
    assert not os.path.exists(local)
    # petrel:// URLs are mapped to s3:// by the backend itself.
    assert backend.get(f"petrel://{bucket}/data/dir/a.bin") == b"\x00binary"


def test_list_dir_or_file(backend: PetrelBackend, bucket: str) -> None:
    root = f"s3://{bucket}/tree"
    for name in ("a.txt", "b.py", "d1/c.txt", "d1/d2/e.py", "d3/f.txt"):
        backend.put(name.encode(), f"{root}/{name}")
    assert sorted(backend.list_dir_or_file(root)) == ["a.txt", "b.py", "d1", "d3"]
    assert sorted(backend.list_dir_or_file(root, list_dir=False)) == ["a.txt", "b.py"]
    assert sorted(backend.list_dir_or_file(root, list_file=False)) == ["d1", "d3"]
    assert sorted(backend.list_dir_or_file(root, recursive=True)) == [
        "a.txt", "b.py", "d1", "d1/c.txt", "d1/d2", "d1/d2/e.py", "d3", "d3/f.txt"]
    assert sorted(backend.list_dir_or_file(root, list_dir=False, suffix=".txt",
                                           recursive=True)) == ["a.txt", "d1/c.txt", "d3/f.txt"]
    assert sorted(backend.list_dir_or_file(root, list_dir=False, suffix=(".py",),
                                           recursive=True)) == ["b.py", "d1/d2/e.py"]
    assert sorted(backend.list_dir_or_file(f"{root}/d1", list_dir=False)) == ["c.txt"]


def test_remove(backend: PetrelBackend, bucket: str) -> None:
    path = f"s3://{bucket}/gone.txt"
    backend.put_text("x", path)
    assert backend.isfile(path)
    backend.remove(path)
    assert not backend.isfile(path)
    assert not backend.exists(path)


def test_fileio_functions_with_conf_path(gateway, bucket: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The module-level API users call, the backend chosen by backend_args."""
    conf = write_conf(tmp_path / "petreloss.conf", gateway.endpoint)
    args = {"backend": "petrel", "conf_path": str(conf)}
    path = f"s3://{bucket}/via/fileio.txt"
    mmengine_fileio.put_text("through fileio", path, backend_args=args)
    assert mmengine_fileio.get_text(path, backend_args=args) == "through fileio"
    assert mmengine_fileio.get(path, backend_args=args) == b"through fileio"
    assert mmengine_fileio.exists(path, backend_args=args)
    assert mmengine_fileio.isdir(f"s3://{bucket}/via", backend_args=args)
    assert list(mmengine_fileio.list_dir_or_file(f"s3://{bucket}/via",
                                                 backend_args=args)) == ["fileio.txt"]
    with mmengine_fileio.get_local_path(path, backend_args=args) as local:
        assert Path(local).read_text() == "through fileio"
    mmengine_fileio.remove(path, backend_args=args)
    assert not mmengine_fileio.exists(path, backend_args=args)
