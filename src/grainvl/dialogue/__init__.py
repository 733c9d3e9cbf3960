"""Persona prediction (arXiv 2111.15093): predict personas from the dialogue history, condition responses on them.

``data`` (the one place dialogue data is read or built), ``memory`` (sources as cached frozen MiniLM
sentence vectors, tagged), ``tokens`` (compact target vocabulary), ``seq2seq`` (sentence memory +
causal decoder), ``predictor`` (generator, approximator), ``responder`` (persona-conditioned
responses, candidate ranking, the five settings), ``nli`` (the C-score judge). Jobs are in
:mod:`grainvl.recipes.dialogue`; docs/persona.md has the results.
"""
