"""Developer tasks. `nox -s tests` is what the README and CI run."""

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]


def install_project(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    # a third-party plugin package, installed as a user would: proves entry-point loading
    session.install("-e", "tests/plugin_example", "--no-deps")


def ensure_chromium(session: nox.Session) -> None:
    """The dashboard's browser tests drive Debian's Chromium (Playwright's own download is
    not used: machines here may not reach it)."""
    if shutil.which("chromium"):
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        session.run("apt-get", "update", "-q", external=True)
        session.run(
            "apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", external=True
        )
    else:
        session.warn("chromium is missing and cannot be installed here: browser tests will fail")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, in parallel; PostgreSQL tests fail (never skip) without a server."""
    ensure_chromium(session)
    install_project(session)
    session.run("pytest", "-n", "auto", "--dist", "loadgroup", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; writes docs/benchmarks.md."""
    install_project(session)
    if "--profile" in session.posargs:
        session.install("py-spy")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate the reference pages from the code, then build the site with --strict."""
    session.install("mkdocs-material", "-e", ".")
    session.run("python", "-m", "comfyui_server.core.docs_gen")
    session.run("mkdocs", "build", "--strict", *session.posargs)
