"""platform/ is a source root without __init__.py: the stdlib `platform` must still win."""

import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_no_init_in_platform_dir():
    assert not (REPO / "platform" / "__init__.py").exists()


@pytest.mark.integration
def test_stdlib_platform_inside_a_ray_worker(ray_cluster):
    ray = ray_cluster

    @ray.remote
    def probe():
        import platform

        import polymodal

        return platform.__file__, platform.system(), polymodal.__file__

    platform_file, system, polymodal_file = ray.get(probe.remote())
    assert Path(platform_file).parent == Path(sysconfig.get_paths()["stdlib"])
    assert system == "Linux"
    assert "platform/polymodal" in polymodal_file.replace("\\", "/")
