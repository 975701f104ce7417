// Package pipeline is the core of the gateway: an Exchange (one request
// crossing the tunnel) moves through a Chain of Stages.
//
// A Stage is one link. Code before it calls next.Handle runs in the request
// phase; code after it runs in the response phase, so response phases run in
// reverse order. The first stage in a chain is the outermost. A stage that
// returns without calling next ends the chain early, typically with a
// *Reject that says which HTTP status the client should see.
//
// A Chain is compiled once by New: each stage is provisioned and validated
// before any request flows, and Handle then costs one interface call per
// stage and allocates nothing. Stages may implement any of Provisioner,
// Validator, Closer and Namer; the chain finds them by type assertion.
//
// Exchanges and buffers are pooled. A stage must not keep an Exchange, or
// any buffer it got from this package, after its Handle returns.
//
// The package also holds the bounded worker pool (ants) that runs accepted
// streams and the buffer pool (bytebufferpool) used on the data path.
package pipeline
