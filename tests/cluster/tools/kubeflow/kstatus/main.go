// kstatus prints the kstatus (sigs.k8s.io/cli-utils) status of one object,
// the judgement Flux, kpt and `kubectl`'s waiters make: Current, InProgress,
// Failed, Terminating, NotFound or Unknown.
//
//	kubectl get tr/x -o json | kstatus        # {"status":"Current","message":"..."}
//
// The object is read from stdin as JSON or YAML; the answer is one JSON line.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	object, err := yaml.YAMLToJSON(data)
	if err != nil {
		return fmt.Errorf("stdin is not one JSON or YAML object: %w", err)
	}
	// Unstructured's own decoder keeps integers int64, as kstatus reads generations.
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(object); err != nil {
		return fmt.Errorf("stdin holds no Kubernetes object: %w", err)
	}
	result, err := status.Compute(u)
	if err != nil {
		return err
	}
	return json.NewEncoder(out).Encode(map[string]string{
		"status":  result.Status.String(),
		"message": result.Message,
	})
}
