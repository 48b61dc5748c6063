def test_call_result_roundtrip(client):
    def square(x):
        return x * x

    assert client.result(client.call(square, 12)) == 144
