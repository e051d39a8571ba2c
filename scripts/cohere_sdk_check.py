#!/usr/bin/env python3
"""Calls a running xbench server with Cohere's own Python SDK and prints what the SDK parsed.

    .venv-clients/bin/python scripts/cohere_sdk_check.py URL MODEL API_KEY QUERY DOC [DOC ...]

`ClientV2(base_url=URL).rerank` posts to /v2/rerank (top_n 2, and again with max_tokens_per_doc 4);
`Client(base_url=URL).rerank` posts to /v1/rerank. Prints one JSON object: {"v2": [...],
"v2_cut": [...], "v2_meta": {...}, "v1": [...]}, each result list as [index, relevance_score]
pairs in the order the SDK returned them. Any SDK error (an HTTP error status, a response it
cannot parse) propagates and exits non-zero. (scripts/install_sdk_clients.sh installs the SDK.)
"""

import json
import sys

import cohere


def main() -> None:
    url, model, api_key, query, *documents = sys.argv[1:]
    v2 = cohere.ClientV2(api_key=api_key, base_url=url, timeout=60)
    answer = v2.rerank(model=model, query=query, documents=documents, top_n=2)
    cut = v2.rerank(model=model, query=query, documents=documents, max_tokens_per_doc=4)
    v1 = cohere.Client(api_key=api_key, base_url=url, timeout=60)
    old = v1.rerank(model=model, query=query, documents=documents)
    meta = answer.meta
    print(json.dumps({
        "v2": [[r.index, r.relevance_score] for r in answer.results],
        "v2_id": answer.id,
        "v2_meta": {
            "version": meta.api_version.version,
            "search_units": meta.billed_units.search_units,
            "input_tokens": meta.tokens.input_tokens,
        },
        "v2_cut": [[r.index, r.relevance_score] for r in cut.results],
        "v2_cut_tokens": cut.meta.tokens.input_tokens,
        "v1": [[r.index, r.relevance_score] for r in old.results],
    }))


if __name__ == "__main__":
    main()
