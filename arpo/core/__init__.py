"""The ground floor: what every other part of arpo agrees on, importing nothing of arpo's own.

- `errors`: the errors a person sees, each with its exit code.
- `run_config`: what determines a run (models, brains, budgets), and the one list of brain providers.
- `settings`: the ARPO_* environment defaults and how flags override them to make a run configuration.
- `phrases`: the phrase vocabulary (how a prompt is made of phrases, when two phrases are the same,
  where a phrase stands in a text as whole words).
- `locations`: where arpo keeps its files by default.

Only the standard library, pydantic and pydantic-settings are used here, so importing the core never
pulls in torch, a database driver or a web framework (checked by import-linter, see pyproject.toml).
"""
