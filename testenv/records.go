package testenv

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// DeleteRecords deletes every record of topic/partition below offset, as
// retention does (Kafka's DeleteRecords API, v0). kafka-go has no client
// for it and the broker's tools jar is not installed, so the request is
// written by hand; the test broker is one node, so it leads every
// partition. The test fails unless the broker's new log start is offset.
func DeleteRecords(t testing.TB, broker, topic string, partition int32, offset int64) {
	t.Helper()
	var body bytes.Buffer
	put := func(v any) { _ = binary.Write(&body, binary.BigEndian, v) }
	str := func(s string) { put(int16(len(s))); body.WriteString(s) }
	put(int16(21)) // api key: DeleteRecords
	put(int16(0))  // version
	put(int32(1))  // correlation id
	str("testenv")
	put(int32(1)) // topics
	str(topic)
	put(int32(1)) // partitions
	put(partition)
	put(offset)
	put(int32(10000)) // timeout ms
	conn, err := net.DialTimeout("tcp", broker, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	frame := binary.BigEndian.AppendUint32(nil, uint32(body.Len()))
	if _, err := conn.Write(append(frame, body.Bytes()...)); err != nil {
		t.Fatal(err)
	}
	var size int32
	if err := binary.Read(conn, binary.BigEndian, &size); err != nil {
		t.Fatal(err)
	}
	res := make([]byte, size)
	if _, err := io.ReadFull(conn, res); err != nil {
		t.Fatal(err)
	}
	// correlation id, throttle, 1 topic (name), 1 partition: id, low watermark, error code.
	name := int(binary.BigEndian.Uint16(res[12:]))
	p := res[14+name+4:]
	low, code := int64(binary.BigEndian.Uint64(p[4:])), int16(binary.BigEndian.Uint16(p[12:]))
	if code != 0 || low != offset {
		t.Fatalf("DeleteRecords %s/%d below %d: error code %d, low watermark %d", topic, partition, offset, code, low)
	}
}
