"""``python -m labkit.hub``: runs ``deploy/hub.py`` of this checkout (the code lives there, beside
the rest of the workshop set-up; labkit holds what the notebooks import)."""

if __name__ == "__main__":
    import runpy
    from pathlib import Path

    runpy.run_path(str(Path(__file__).resolve().parents[1] / "deploy" / "hub.py"), run_name="__main__")
