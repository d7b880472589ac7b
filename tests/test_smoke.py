from pipeline_client import Ref


def test_submit_and_result(daemon):
    c = daemon.client
    a = c.submit("tests.tasks:square", args=[4], priority="high", timeout=5)
    b = c.submit("tests.tasks:add", args=[Ref(a), 1], max_retries=2)
    assert c.result(b, timeout=10) == 17
