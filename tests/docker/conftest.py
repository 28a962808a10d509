import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "docker: runs the built Docker image (make docker-test; skipped unless "
        "VIDEOCHAT_DOCKER_IMAGE names an image)",
    )
