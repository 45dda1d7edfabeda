package gateway

import (
	"errors"
	"fmt"
)

// Sentinel errors returned by Request, wrapped with detail; test them with
// errors.Is.
var (
	// ErrInvalidRequest: the request can't be published as it is (bad
	// topic, property or QoS). Nothing was sent.
	ErrInvalidRequest = errors.New("gateway: invalid request")
	// ErrNoResponders: nobody is subscribed to the topic.
	ErrNoResponders = errors.New("gateway: no responders")
	// ErrNotConnected: the gateway has no broker connection, or lost it
	// while the request was waiting.
	ErrNotConnected = errors.New("gateway: not connected to the broker")
	// ErrTimeout: no reply arrived before the deadline.
	ErrTimeout = errors.New("gateway: timeout")
	// ErrClosed: the gateway is shutting down.
	ErrClosed = errors.New("gateway: closed")
	// ErrTooLarge: the request would make a packet larger than the broker
	// accepts (its CONNACK Maximum Packet Size). Nothing was sent.
	ErrTooLarge = errors.New("gateway: request too large for the broker")
	// ErrReplyTooLarge: the responder's reply is larger than
	// Config.MaxReply. It was dropped.
	ErrReplyTooLarge = errors.New("gateway: reply too large")
)

// PublishError reports that the broker refused a publish with an MQTT v5
// reason code of 0x80 or above.
type PublishError struct {
	ReasonCode byte
	Reason     string // reason string from the broker, if any
}

func (e *PublishError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("gateway: broker rejected the publish: reason code 0x%02x (%s)", e.ReasonCode, e.Reason)
	}
	return fmt.Sprintf("gateway: broker rejected the publish: reason code 0x%02x", e.ReasonCode)
}

// Field names a part of a Request.
type Field string

// The parts of a Request that can be invalid; a Field's value is its name
// in messages.
const (
	FieldTopic        Field = "topic"
	FieldQoS          Field = "qos"
	FieldContentType  Field = "content type"
	FieldUserProperty Field = "user property"
	FieldTTL          Field = "ttl"
	FieldMaxReplies   Field = "max-replies"
)

// InvalidError says which part of a Request is invalid and why. It matches
// ErrInvalidRequest with errors.Is.
type InvalidError struct {
	Field  Field
	Reason string
}

func (e *InvalidError) Error() string {
	return fmt.Sprintf("gateway: invalid %s: %s", e.Field, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidRequest) true.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalidRequest }

func invalid(field Field, format string, args ...any) error {
	return &InvalidError{Field: field, Reason: fmt.Sprintf(format, args...)}
}
