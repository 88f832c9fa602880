

def test_resume_on_another_node_by_last_event_id(kafka_mock, sluice_factory):
    """Two processes, each with its own group, fed by the same partition: a client that moves
    from one to the other with its Last-Event-ID misses nothing and sees nothing twice."""
    kafka_mock.topic("nd", 1)
    n1 = start_source(sluice_factory, kafka_mock, kafka_topics="nd", topic="nd/{partition}",
                      server={"node": "n1"}, group="sluice-{node}-" + unique_group())
    n2 = start_source(sluice_factory, kafka_mock, kafka_topics="nd", topic="nd/{partition}",
                      server={"node": "n2"}, group="sluice-{node}-" + unique_group())
    kafka_mock.produce("nd", 0, 40, prefix="m")
    first = read_n(n1.sse("/topics/nd/0?from=oldest"), 25, stall=20)
    wait_for(lambda: (n2.topics().get("nd/0") or {}).get("messages") == 40, 30,
             "the second node has consumed everything")
    kafka_mock.produce("nd", 0, 10, prefix="late")
    sub = n2.sse("/topics/nd/0", headers={"Last-Event-ID": first[-1]["id"]})
    rest = read_n(sub, 25, stall=20)
    assert [e["data"] for e in first + rest] == \
        [f"m{i}" for i in range(40)] + [f"late{i}" for i in range(10)]
    ids = [e["id"] for e in first + rest]
    assert len(set(ids)) == 50 and [int(i.split("-")[1]) for i in ids] == list(range(1, 51))
    assert sub.no_event_within(0.5)
    groups = {s["name"]: s for s in sources(n1).values()}
    assert groups  # both nodes report their source
