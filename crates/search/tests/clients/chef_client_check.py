"""Drives Larder's search service with a real ES/OpenSearch client library.

usage: chef_client_check.py (elasticsearch7|opensearch) URL [CA_FILE USER PASSWORD]

With CA_FILE, USER and PASSWORD the client verifies the server against CA_FILE (an https URL)
and sends HTTP Basic credentials, as a Chef 15 frontend does; it then also checks that a
client without credentials and one with a wrong password are refused with 401.

Exits non-zero (assertion) on any mismatch. Documents have the exact shape erchef writes.
"""
import sys


def chef_doc(db, i):
    name = f"{db}-{i}"
    content = (
        f"X_CHEF_database_CHEF_X__=__chef_{db} X_CHEF_id_CHEF_X__=__{name} "
        f"X_CHEF_type_CHEF_X__=__node chef_environment__=__prod name__=__{name} "
        f"roles__=__{'base' if i % 2 == 0 else 'web'} "
    )
    return {
        "content": content,
        "X_CHEF_id_CHEF_X": name,
        "X_CHEF_database_CHEF_X": f"chef_{db}",
        "X_CHEF_type_CHEF_X": "node",
    }


def main():
    flavor, url = sys.argv[1], sys.argv[2]
    secure = sys.argv[3:6]
    if flavor == "elasticsearch7":
        from elasticsearch7 import Elasticsearch as Client, helpers
    else:
        from opensearchpy import OpenSearch as Client, helpers
    db = "es7" if flavor == "elasticsearch7" else "os"
    if secure:
        ca, user, password = secure
        tls = {"verify_certs": True, "ca_certs": ca}
        es = Client([url], http_auth=(user, password), **tls)
        for auth in (None, (user, password + "x")):
            bad = Client([url], http_auth=auth, max_retries=0, **tls) if auth else Client([url], max_retries=0, **tls)
            try:
                bad.info()
                raise AssertionError(f"accepted without valid credentials: {auth and auth[0]}")
            except Exception as e:  # library-specific AuthenticationException
                assert getattr(e, "status_code", None) == 401, repr(e)
                assert "security_exception" in str(e), repr(e)
    else:
        es = Client([url])

    info = es.info()
    assert info["version"]["number"].startswith("7."), info
    assert es.cluster.health()["status"] in ("green", "yellow")

    if not es.indices.exists(index="chef"):
        es.indices.create(index="chef", body={
            "settings": {"analysis": {"analyzer": {"default": {"type": "whitespace"}}}},
            "mappings": {"properties": {"content": {"type": "text"}}},
        })
    assert es.indices.exists(index="chef")

    actions = [
        {"_op_type": "index", "_index": "chef", "_id": f"{db}-{i}", "_source": chef_doc(db, i)}
        for i in range(100)
    ]
    ok, errors = helpers.bulk(es, actions)
    assert ok == 100 and not errors, (ok, errors)
    es.indices.refresh(index="chef")

    body = {
        "stored_fields": "_id", "from": 0, "size": 1000,
        "sort": [{"X_CHEF_id_CHEF_X": {"order": "asc"}}],
        "query": {"bool": {
            "must": {"query_string": {"query": f"content:name__=__{db}-1*"}},
            "filter": {"query_string": {"query": f"+X_CHEF_database_CHEF_X:chef_{db} +X_CHEF_type_CHEF_X:node"}},
        }},
        "track_total_hits": True,
    }
    r = es.search(index="chef", body=body)
    ids = [h["_id"] for h in r["hits"]["hits"]]
    want = sorted([f"{db}-1"] + [f"{db}-1{k}" for k in range(10)])
    assert r["hits"]["total"]["value"] == 11, r["hits"]["total"]
    assert ids == want, ids

    q = {"query": {"query_string": {"query": f"X_CHEF_database_CHEF_X:chef_{db} AND content:roles__=__base"}}}
    assert es.count(index="chef", body=q)["count"] == 50

    doc = es.get(index="chef", id=f"{db}-7")
    assert doc["found"] and doc["_id"] == f"{db}-7", doc

    r = es.delete(index="chef", id=f"{db}-7", refresh=True)
    assert r["result"] == "deleted", r
    all_q = {"query": {"query_string": {"query": f"X_CHEF_database_CHEF_X:chef_{db}"}}}
    assert es.count(index="chef", body=all_q)["count"] == 99

    r = es.delete_by_query(index="chef", body=all_q)
    assert r["deleted"] == 99, r
    es.indices.refresh(index="chef")
    assert es.count(index="chef", body=all_q)["count"] == 0

    # a bad query is a client error (400), surfaced by the library as RequestError
    try:
        es.search(index="chef", body={"query": {"query_string": {"query": "content:(broken"}}})
        raise AssertionError("bad query accepted")
    except Exception as e:  # library-specific RequestError
        assert getattr(e, "status_code", None) == 400, repr(e)

    print(f"{flavor}: ok")


if __name__ == "__main__":
    main()
