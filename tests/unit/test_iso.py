"""The NoCloud seed ISO as cloud-init finds it: label `cidata`, the three files at the root under
their exact names (Rock Ridge for Linux, Joliet for cloudbase-init), content byte for byte."""

import io

import pycdlib
import pytest
import yaml

from kahuna.cloudinit import CloudInitProfile, NetAdapter, build_iso, read_iso, render, volume_label

FILES = render(CloudInitProfile(
    hostname="db-1", instance_id="65a1b2c3d4e5f60718293a4b", zone="z1", region="r1",
    root_password="pw", metadata_url="http://k/latest/meta-data", local_ip="10.0.0.9",
    metadata_token="tok", zone_gateway="10.0.0.1",
    adapters=(NetAdapter(mac="da:1e:70:0a:0b:0c", cidr="10.0.0.0/24", addresses=("10.0.0.9",), gateway="10.0.0.254"),)))


@pytest.fixture(scope="module")
def image():
    return build_iso(FILES)


def test_round_trip(image):
    assert image[0x8001:0x8006] == b"CD001"  # ISO 9660 primary volume descriptor
    assert len(image) % 2048 == 0
    assert read_iso(image) == FILES
    assert yaml.safe_load(read_iso(image)["meta-data"])["kowabunga_metadata_token"] == "tok"


def test_nocloud_view(image):
    """What cloud-init's NoCloud datasource relies on: the volume label and the root file names."""
    assert volume_label(image) == "cidata"
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        assert iso.has_rock_ridge() and iso.has_joliet()
        rr = sorted(c.rock_ridge.name().decode() for c in iso.list_children(rr_path="/")
                    if not (c.is_dot() or c.is_dotdot()))
        assert rr == ["meta-data", "network-config", "user-data"]
        joliet = sorted(c.file_identifier().decode("utf-16_be") for c in iso.list_children(joliet_path="/")
                        if not (c.is_dot() or c.is_dotdot()))
        assert joliet == ["meta-data", "network-config", "user-data"]
        assert iso.joliet_vd.volume_identifier.decode("utf-16_be").strip() == "cidata"
        buf = io.BytesIO()
        iso.get_file_from_iso_fp(buf, rr_path="/user-data")
        assert buf.getvalue() == FILES["user-data"].encode()
    finally:
        iso.close()


def test_not_an_iso():
    with pytest.raises(ValueError):
        read_iso(b"\0" * 65536)
    with pytest.raises(ValueError):
        build_iso({"../x": "y"})


def test_bytes_and_unicode_content():
    data = read_iso(build_iso({"user-data": "#cloud-config\nhostname: \"é\"\n", "meta-data": b"a: 1\n"}))
    assert data == {"user-data": "#cloud-config\nhostname: \"é\"\n", "meta-data": "a: 1\n"}


@pytest.mark.parametrize("joliet,rock_ridge", [(3, None), (None, None)])
def test_reads_images_without_rock_ridge(joliet, rock_ridge):
    """Other writers' seeds: Joliet only, or bare ISO 9660 (names read back lowercased)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="CIDATA", joliet=joliet, rock_ridge=rock_ridge)
    for iso_name, name, data in (("/META_DATA.;1", "meta-data", b"a: 1\n"), ("/USER_DATA.;1", "user-data", b"#cloud-config\n")):
        kw = {"joliet_path": "/" + name} if joliet else {}
        iso.add_fp(io.BytesIO(data), len(data), iso_path=iso_name, **kw)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    files = read_iso(out.getvalue())
    if joliet:
        assert files == {"meta-data": "a: 1\n", "user-data": "#cloud-config\n"}
    else:
        assert files == {"meta_data": "a: 1\n", "user_data": "#cloud-config\n"}
    assert volume_label(out.getvalue()).lower() == "cidata"
