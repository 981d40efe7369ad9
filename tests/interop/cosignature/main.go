// Command cosignature is an independent check of MASB's C2SP tlog-cosignature (cosignature/v1)
// support, built on github.com/transparency-dev/formats/note and golang.org/x/mod/sumdb/note.
//
//	cosignature verify   stdin {"note", "log_vkey", "witness_vkeys": [...]}; prints {"verified": [names]}
//	cosignature sign     stdin {"skey", "text"}; prints {"lines": "<signature lines>"}
//	cosignature vectors  prints known-answer vectors made with fixed keys (tests/vectors/cosignature)
//
// Exit status 1 with the error on stderr when a note does not verify.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

func main() {
	if len(os.Args) != 2 {
		fail("usage: cosignature verify|sign|vectors")
	}
	switch os.Args[1] {
	case "verify":
		var in struct {
			Note         string   `json:"note"`
			LogVKey      string   `json:"log_vkey"`
			WitnessVKeys []string `json:"witness_vkeys"`
		}
		readJSON(&in)
		verifiers := []note.Verifier{}
		if in.LogVKey != "" {
			v, err := note.NewVerifier(in.LogVKey)
			check(err)
			verifiers = append(verifiers, v)
		}
		for _, k := range in.WitnessVKeys {
			v, err := fnote.NewVerifierForCosignatureV1(k)
			check(err)
			verifiers = append(verifiers, v)
		}
		n, err := note.Open([]byte(in.Note), note.VerifierList(verifiers...))
		check(err)
		names := []string{}
		for _, s := range n.Sigs {
			names = append(names, s.Name)
		}
		writeJSON(map[string]any{"verified": names, "text": n.Text})
	case "sign":
		var in struct {
			SKey string `json:"skey"`
			Text string `json:"text"`
		}
		readJSON(&in)
		s, err := fnote.NewSignerForCosignatureV1(in.SKey)
		check(err)
		signed, err := note.Sign(&note.Note{Text: in.Text}, s)
		check(err)
		writeJSON(map[string]any{"lines": string(signed[len(in.Text)+1:])})
	case "vectors":
		writeJSON(vectors())
	default:
		fail("unknown mode " + os.Args[1])
	}
}

// seeded returns a reader that yields the 32-byte seed b, b+1, ..., b+31 (for note.GenerateKey).
func seeded(b byte) io.Reader {
	seed := make([]byte, 32)
	for i := range seed {
		seed[i] = b + byte(i)
	}
	return bytes.NewReader(seed)
}

func vectors() map[string]any {
	logSKey, logVKey, err := note.GenerateKey(seeded(0), "masb.example/audit/vectors")
	check(err)
	logSigner, err := note.NewSigner(logSKey)
	check(err)
	texts := []string{
		"masb.example/audit/vectors\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",
		"masb.example/audit/vectors\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
		"masb.example/audit/vectors\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\nan extension line\n",
	}
	type witness struct {
		Seed       int    `json:"seed_first_byte"`
		Name       string `json:"name"`
		SKey       string `json:"skey"`
		VKey       string `json:"vkey"`
		Ed25519Key string `json:"ed25519_vkey"`
	}
	witnesses := []witness{}
	signers := []note.Signer{logSigner}
	logVerifier, err := note.NewVerifier(logVKey)
	check(err)
	verifiers := []note.Verifier{logVerifier}
	for i, name := range []string{"witness-a.example/w", "witness-b.example/w"} {
		seed := byte(0x40 + 0x20*i)
		skey, vkey, err := note.GenerateKey(seeded(seed), name)
		check(err)
		cosigVKey, err := fnote.VKeyToCosignatureV1(vkey)
		check(err)
		s, err := fnote.NewSignerForCosignatureV1(skey)
		check(err)
		signers = append(signers, s)
		verifiers = append(verifiers, s.Verifier())
		witnesses = append(witnesses, witness{int(seed), name, skey, cosigVKey, vkey})
	}
	notes := []map[string]any{}
	for _, text := range texts {
		signed, err := note.Sign(&note.Note{Text: text}, signers...)
		check(err)
		n, err := note.Open(signed, note.VerifierList(verifiers...))
		check(err)
		stamps := []int64{}
		for _, s := range n.Sigs[1:] {
			t, err := fnote.CoSigV1Timestamp(s)
			check(err)
			stamps = append(stamps, t.Unix())
		}
		notes = append(notes, map[string]any{"text": text, "note": string(signed), "cosignature_timestamps": stamps})
	}
	return map[string]any{
		"generated_by": "tests/interop/cosignature (github.com/transparency-dev/formats/note, golang.org/x/mod/sumdb/note)",
		"log_vkey":     logVKey,
		"witnesses":    witnesses,
		"notes":        notes,
	}
}

func readJSON(v any) {
	check(json.NewDecoder(os.Stdin).Decode(v))
}

func writeJSON(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	check(enc.Encode(v))
}

func check(err error) {
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, strings.TrimSpace(msg))
	os.Exit(1)
}
