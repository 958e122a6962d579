from bimguard import bim
from bimguard.model import Bim

IMG = "longhornio/backing-image-manager:v1.7.2"


def _bim(name: str, image: str = IMG) -> Bim:
    return Bim(name=name, node="n", disk_uuid="c01200da-8a5c-4692-92e6-c4a983087951", disk_path="/x", image=image,
               label_uuid="", backing_images=frozenset(), deleting=False)


def test_image_prefixes_match_longhorns_names():
    # sha512(image)[:4] (types/types.go:385, util/util.go:399-406 @v1.7.2) of each release's default
    # image; 5ae6 and 4407 also appear in longhorn/longhorn#10616 and the KB.
    expected = {"v1.7.2": "5ae6", "v1.7.3": "78bd", "v1.7.4": "efef", "v1.8.0": "b43d", "v1.8.1": "8494",
                "v1.8.2": "f86a", "v1.9.0": "8792", "v1.9.1": "4407"}
    for tag, prefix in expected.items():
        assert bim.image_prefix(f"longhornio/backing-image-manager:{tag}") == prefix


def test_bim_name_uses_the_first_four_uuid_characters_lowercased():
    assert bim.prefix_bim_name(IMG, "C012EB76-F8EB-4EA1-B81D-472EAC9D98BF") == "backing-image-manager-5ae6-c012"


def test_prefix_naming_versions():
    affected = ["v1.4.0", "v1.6.4", "v1.7.0", "v1.7.4", "v1.7.9", "v1.8.0", "v1.8.2", "v1.9.0", "v1.9.1",
                "v1.9.0-hotfix-1"]
    fixed = ["v1.8.3", "v1.9.2", "v1.9.2-hotfix-1", "v1.9.3", "v1.10.0", "v1.10.2", "v1.12.1", "v2.0.0"]
    for v in affected:
        assert bim.prefix_naming(bim.parse_version(v)), v
    for v in fixed:
        assert not bim.prefix_naming(bim.parse_version(v)), v


def test_detect_prefers_the_version_setting():
    info = bim.detect({"current-longhorn-version": "v1.9.2", "default-backing-image-manager-image": IMG}, [])
    assert (info.version, info.affected) == ("v1.9.2", False)
    assert info.version_source == "setting current-longhorn-version"
    assert info.expected_bim_name("c012eb76-f8eb-4ea1-b81d-472eac9d98bf") is None


def test_detect_falls_back_to_the_image_tag_then_to_bim_names():
    info = bim.detect({"default-backing-image-manager-image": "registry.local/lh/bim:v1.8.1"}, [])
    assert (info.version, info.affected, info.bim_image) == ("v1.8.1", True, "registry.local/lh/bim:v1.8.1")
    # A private registry prefix changes the hash (Longhorn's chart prepends it to the image:
    # longhorn/longhorn chart/templates/daemonset-sa.yaml:40-41 @v1.7.2).
    assert info.image_prefix != bim.image_prefix("longhornio/backing-image-manager:v1.8.1")

    untagged = "registry.local:5000/lh/bim:custom-build"
    info = bim.detect({}, [_bim("backing-image-manager-1234-c012", untagged)])
    assert (info.version, info.affected, info.bim_image) == (None, True, untagged)

    info = bim.detect({}, [_bim("bim-" + "ab" * 32, untagged)])
    assert (info.version, info.affected) == (None, False)

    assert bim.detect({}, []).affected is None
