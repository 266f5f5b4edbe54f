"""``python -m glm4v_edge`` runs the CLI."""

from glm4v_edge.cli import main

main()
