"""patent_risk: fine-tune, serve and evaluate models that judge patent-infringement risk as JSON.

The installed project is this one namespace. Its parts live at the repository's top level and are mapped in by
pyproject.toml ([tool.setuptools.package-dir]): ``patent_risk.train`` is train/, ``patent_risk.evaluate`` is
evaluate/, and so on for serve/, schemas/, runtime/, datagen/, bench/ and cli/. The command is ``patent-risk``
(``python -m patent_risk`` is the same).
"""

__version__ = "0.1.0"
