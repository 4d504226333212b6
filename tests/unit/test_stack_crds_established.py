"""#27 item 5: the local stack's start waited for the CRDs with
`kubectl wait --for=condition=Established`, which fails at once when a CRD has no
status yet (a busy API server, just after the apply). The stack now polls, and a CRD
without a status counts as not Established yet instead of as an error."""
from tests.stack.localstack import established_crds


def crd(name: str, status: object) -> dict[str, object]:
    return {"metadata": {"name": name}, **({} if status is None else {"status": status})}


def test_27_5_a_crd_without_a_status_yet_is_not_established_and_not_an_error() -> None:
    listing = {"items": [
        crd("a.gpudock.dev", None),
        crd("b.gpudock.dev", {}),
        crd("c.gpudock.dev", {"conditions": None}),
        crd("d.gpudock.dev", {"conditions": [{"type": "NamesAccepted", "status": "True"}]}),
        crd("e.gpudock.dev", {"conditions": [{"type": "Established", "status": "False"}]}),
        crd("f.gpudock.dev", {"conditions": [{"type": "Established", "status": "True"}]}),
    ]}
    assert established_crds(listing) == {"f.gpudock.dev"}
    assert established_crds({}) == set()
