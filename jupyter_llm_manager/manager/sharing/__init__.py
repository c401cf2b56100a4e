"""One copy per machine: members lend the copies they hold and borrow the others', and ``serve`` answers tools.

``protocol``: the OpenAI wire format between members, with the borrower's exact
parameters; ``answering``: what a server answers from; ``openai_routes``: the
OpenAI-compatible routes (chat, completions, embeddings, models) over an
``Answering`` (``openai_requests`` reads the bodies, ``openai_answers`` writes
the answers); ``lending``: this member's copies, answered to other members;
``borrowing``: this member's requests, answered by another member's copy (``borrowed``: the run that
reads that copy's answer);
``serving``: ``jupyter-llm-manager serve``.
"""
