"""The ``detgn`` command and its subcommands (``detgn train``, ``detgn export``, ...).

Each subcommand is a module here with a ``main(argv)`` (the training run's is
:func:`detgn.engine.run.cli`); ``tools/*.py`` in a clone call the same functions, so
``python tools/export_model.py ...`` and ``detgn export ...`` take the same arguments.
:mod:`detgn.cli.main` is the dispatcher.
"""
